"""llama.cpp's native `POST /completion`: its request fields and its answer shape."""

from typing import Literal

from pydantic import Field

from server.engine.request import GenerationOutput
from server.protocol.generation import RawPromptFields


class LlamaCppCompletionRequest(RawPromptFields):
    """The sampler fields and aliases are shared with /v1/completions (`n_predict`, `repeat_penalty`, `samplers`,
    list-shaped `logit_bias`, ...); the prompt may also be a list of token ids."""

    prompt: str | list[int]
    n_probs: int | None = Field(None, ge=0, le=20, description="Alternatives reported per token.")
    cache_prompt: bool | None = Field(None, description="Accepted: recent prompts are always cached and reused.")

    def reported_logprobs(self) -> int | None:
        return self.n_probs


StopType = Literal["none", "eos", "limit", "word"]


def stop_type(output: GenerationOutput) -> StopType:
    if output.finish_reason is None:
        return "none"
    if output.finish_reason == "length":
        return "limit"
    return "word" if output.stop_string else "eos"
