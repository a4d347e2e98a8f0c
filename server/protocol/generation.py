"""What every generating request shares beyond its sampler fields, and the options it asks of the engine.

`/v1/completions` and llama.cpp's `/completion` both take a raw prompt: their shared fields live here; the chat
route shares only the options.
"""

from dataclasses import dataclass
from typing import Annotated

from pydantic import AliasChoices, BeforeValidator, Field

from server.protocol.sampling import SamplerFields


@dataclass(frozen=True)
class GenerationOptions:
    """A request's answer to "what to generate", beyond its sampling parameters."""

    max_tokens: int | None  # None: as many as the context allows
    samples: int = 1
    stops: tuple[str, ...] = ()
    turn_stops: tuple[str, ...] = ()  # stops that end only the `turns`-th turn
    turns: int = 1
    logprobs: int | None = None  # report each token's logprob and this many alternatives
    skip_special_tokens: bool = True


def _unlimited_as_unset(value: object) -> object:
    """llama.cpp's `n_predict: -1` means "no limit"."""
    return None if value == -1 else value


class RawPromptFields(SamplerFields):
    """Fields of the raw-prompt routes (`/v1/completions`, llama.cpp's `/completion`)."""

    model: str | None = Field(None, description="Accepted and ignored: this server serves one model.")
    max_tokens: Annotated[int | None, BeforeValidator(_unlimited_as_unset)] = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("max_tokens", "max_new_tokens", "n_predict"),
        description="Unset: as many as the context allows.",
    )
    stop: str | list[str] | None = None
    stopping_strings: list[str] | None = None
    stream: bool | None = False
    n: int | None = Field(1, ge=1)
    add_bos_token: bool | None = Field(True, description="Start the prompt with BOS unless it already does.")
    skip_special_tokens: bool = Field(True, description="Leave special tokens' text out of the output.")
    truncation_length: int | None = Field(
        None, ge=1, description="Cut the prompt from the left (keeping BOS) so prompt + max_tokens fit in this."
    )
    trim_label_space: bool | None = Field(
        None,
        description="A prompt ending in a `::::` label and its space is sent without the space, and the reply's "
        "leading space is dropped. Unset: the server's --trim-label-space.",
    )

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [stop for stop in dict.fromkeys([*stops, *(self.stopping_strings or [])]) if stop]

    def reported_logprobs(self) -> int | None:
        """How many alternatives each token's report carries; None: no report."""
        return None

    def generation_options(self) -> GenerationOptions:
        return GenerationOptions(
            max_tokens=self.max_tokens,
            samples=self.n or 1,
            stops=tuple(self.stop_list()),
            logprobs=self.reported_logprobs(),
            skip_special_tokens=self.skip_special_tokens,
        )
