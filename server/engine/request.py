"""What goes into the engine and what comes back out of it, per sample."""

from dataclasses import dataclass, replace
from typing import Literal

from sampling import SamplingParams

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class GenerationRequest:
    """One sample to generate; several samples of one prompt (n > 1) are submitted together."""

    sample_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    stop_strings: tuple[str, ...]
    max_tokens: int
    # Matches of a turn stop end generation only at the `turns`-th; earlier ones are part of the text.
    turn_stops: tuple[str, ...] = ()
    turns: int = 1
    skip_special_tokens: bool = True
    logprobs: int | None = None  # report the chosen token's logprob and this many alternatives
    banned_strings: tuple[str, ...] = ()  # never sent: the engine backs off and samples again
    log_id: str = ""  # the caller's id for the request, which `--log-content` lines carry
    cache_reuse: int = 0  # > 0: cached runs of at least this many prompt tokens are moved, not prefilled


@dataclass(frozen=True)
class GenerationError:
    """Why a sample failed. `retryable`: the same request later can succeed (timed out in the queue, shutting
    down, the engine restarting); otherwise the engine failed on it. `code`: OpenAI's error code for clients."""

    message: str
    retryable: bool = False
    code: str = "generation_failed"


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token under the model's own distribution (before sampling filters)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationOutput:
    """New text since the previous output, and the tokens generated since then. The last output of a sample has
    a `finish_reason`; with "error", `error` says what went wrong."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    error: GenerationError | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_string: str | None = None  # the stop string that ended generation, if one did
    cancelled: bool = False  # ended by an abort (finish reason "stop" to the client; "cancelled" in the log)
    shifted_tokens: int = 0  # prompt tokens whose cache was moved from elsewhere (cache reuse); on the last output
    prompt_read: int | None = None  # set on an output that only reports how much of a long prompt is read so far

    def with_text(self, text: str) -> "GenerationOutput":
        return replace(self, text=text)
