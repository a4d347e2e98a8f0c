"""Request and response models of `POST /v1/completions`, in OpenAI's shape.

Unknown fields are ignored, never rejected: SillyTavern sends about seventy keys meant for other backends.
A field sent as null means "use the default".
"""

import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from server.engine.request import FinishReason, GenerationOutput
from server.protocol.sampling import SamplerFields


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


def _unlimited_as_unset(value: object) -> object:
    """llama.cpp's `n_predict: -1` means "no limit"."""
    return None if value == -1 else value


class CompletionRequest(SamplerFields):
    model: str | None = Field(None, description="Accepted and ignored: this server serves one model.")
    prompt: str
    max_tokens: Annotated[int | None, BeforeValidator(_unlimited_as_unset)] = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("max_tokens", "max_new_tokens", "n_predict"),
        description="Unset: as many as the context allows.",
    )
    stop: str | list[str] | None = None
    stopping_strings: list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = False
    n: int | None = Field(1, ge=1)
    add_bos_token: bool | None = Field(True, description="Start the prompt with BOS unless it already does.")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Report each token's logprob and this many most likely alternatives."
    )
    skip_special_tokens: bool = Field(True, description="Leave special tokens' text out of the output.")
    truncation_length: int | None = Field(
        None, ge=1, description="Cut the prompt from the left (keeping BOS) so prompt + max_tokens fit in this."
    )
    genkey: str | None = Field(None, description="KoboldCpp: a name for this generation, for /api/extra/abort.")
    trim_label_space: bool | None = Field(
        None,
        description="A prompt ending in a `::::` label and its space is sent without the space, and the reply's "
        "leading space is dropped. Unset: the server's --trim-label-space.",
    )

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [stop for stop in dict.fromkeys([*stops, *(self.stopping_strings or [])]) if stop]


class CompletionLogprobs(BaseModel):
    """OpenAI's completions logprobs, for the generated tokens (under the model's own distribution)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    @classmethod
    def of_samples(cls, finals: Sequence[GenerationOutput]) -> "Usage":
        """The whole answer's usage from each sample's last output: one prompt, every sample's tokens."""
        return cls.of(finals[0].prompt_tokens, sum(output.completion_tokens for output in finals))


class CompletionResponse(BaseModel):
    """Both the whole answer and, streamed, each chunk (`usage` then only on the last one)."""

    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
