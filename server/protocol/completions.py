"""Request and response models of `POST /v1/completions`, in OpenAI's shape.

Unknown fields are ignored, never rejected: SillyTavern sends about seventy keys meant for other backends.
A field sent as null means "use the default".
"""

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from sampling import SamplingParams, SamplingParamsError
from server.engine.request import FinishReason


def _bias_pairs_to_dict(value: object) -> object:
    """llama.cpp sends logit_bias as a list of [token id, bias] pairs; OpenAI as an object."""
    if isinstance(value, list):
        return {str(pair[0]): pair[1] for pair in value if isinstance(pair, list | tuple) and len(pair) == 2}
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Accepted and ignored: this server serves one model.")
    prompt: str
    max_tokens: int | None = Field(None, ge=1, description="Unset: as many as the context allows.")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, description="Same seed, prompt and parameters: same text. Negative: random.")
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logit_bias: Annotated[dict[str, float] | None, BeforeValidator(_bias_pairs_to_dict)] = None
    echo: bool | None = False
    n: int | None = Field(1, ge=1)
    add_bos_token: bool | None = Field(True, description="Start the prompt with BOS unless it already does.")

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [stop for stop in stops if stop]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
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


class CompletionResponse(BaseModel):
    """Both the whole answer and, streamed, each chunk (`usage` then only on the last one)."""

    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


def sampling_params(request: CompletionRequest) -> SamplingParams:
    """The request's sampling settings over the defaults; raises SamplingParamsError naming a bad field."""
    given = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "seed": request.seed if request.seed is None or request.seed >= 0 else None,
        "logit_bias": _token_bias(request.logit_bias or {}),
    }
    return SamplingParams(**{name: value for name, value in given.items() if value is not None})


def _token_bias(bias: dict[str, float]) -> dict[int, float]:
    parsed = {}
    for key, value in bias.items():
        try:
            parsed[int(key)] = value
        except ValueError as error:
            raise SamplingParamsError("logit_bias", f"logit_bias key '{key}' is not a token id") from error
    return parsed
