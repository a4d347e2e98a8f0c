"""What goes into the engine and what comes back out of it, per request."""

from dataclasses import dataclass, replace
from typing import Literal

from sampling import SamplingParams

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    stop_strings: tuple[str, ...]
    max_tokens: int
    # Matches of a turn stop end generation only at the `turns`-th; earlier ones are part of the text.
    turn_stops: tuple[str, ...] = ()
    turns: int = 1


@dataclass(frozen=True)
class GenerationOutput:
    """New text since the previous output. The last output of a request has a `finish_reason`; with "error",
    `error` says what went wrong."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    error: str | None = None

    def with_text(self, text: str) -> "GenerationOutput":
        return replace(self, text=text)
