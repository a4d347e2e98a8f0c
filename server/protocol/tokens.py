"""Token counting and decoding bodies, in each owner's shape (text-generation-webui, TabbyAPI, vLLM, Aphrodite,
llama.cpp, KoboldCpp)."""

from pydantic import ConfigDict, Field

from server.protocol.body import RequestBody


class _Body(RequestBody):
    model_config = ConfigDict(extra="ignore")


class TextBody(_Body):
    """text-generation-webui's `/v1/internal/encode` and `/token-count`."""

    text: str


class TabbyEncodeBody(_Body):
    text: str
    add_bos_token: bool = True


class TokenizeBody(_Body):
    """vLLM and Aphrodite send `prompt`; llama.cpp sends `content` to the same `/tokenize`."""

    prompt: str | None = None
    content: str | None = None
    add_special_tokens: bool | None = Field(None, description="vLLM: add BOS (default true).")
    add_special: bool | None = Field(None, description="llama.cpp: add BOS (default false).")


class KoboldCountBody(_Body):
    prompt: str


class DecodeBody(_Body):
    tokens: list[int]
