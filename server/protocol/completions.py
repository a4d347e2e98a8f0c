"""Request and response models of `POST /v1/completions`, in OpenAI's shape.

Unknown fields are ignored, never rejected: SillyTavern sends about seventy keys meant for other backends.
A field sent as null means "use the default".
"""

import time
import uuid
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.engine.request import FinishReason, GenerationOutput
from server.protocol.generation import RawPromptFields


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CompletionRequest(RawPromptFields):
    prompt: str
    stream_options: StreamOptions | None = None
    echo: bool | None = False
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Report each token's logprob and this many most likely alternatives."
    )
    genkey: str | None = Field(None, description="KoboldCpp: a name for this generation, for /api/extra/abort.")

    def reported_logprobs(self) -> int | None:
        return self.logprobs


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
