"""Tokenizing, counting and decoding for every client type SillyTavern offers, in their owners' shapes.

SillyTavern calls these about ten times per generation, so they never touch the model: the tokenizer runs on a
worker thread of the HTTP process, beside (never behind) a running generation.
"""

from fastapi import APIRouter, Request

from server.errors import APIError
from server.protocol.tokens import DecodeBody, KoboldCountBody, TabbyEncodeBody, TextBody, TokenizeBody
from server.serving.tokenizing import encoded
from server.state import ready_engine

router = APIRouter()


async def _encode(request: Request, text: str, *, add_bos: bool) -> list[int]:
    return await encoded(ready_engine(request), text, add_bos=add_bos)


def _decode(request: Request, tokens: list[int]) -> str:
    vocabulary = ready_engine(request).vocabulary
    outside = vocabulary.outside(tokens)
    if outside:
        raise APIError(400, f"Token id {outside[0]} is not in the vocabulary.", param="tokens")
    return vocabulary.decode(tokens)


@router.post("/v1/internal/encode")
async def webui_encode(body: TextBody, request: Request) -> dict:
    tokens = await _encode(request, body.text, add_bos=True)
    return {"tokens": tokens, "length": len(tokens)}


@router.post("/v1/internal/token-count")
async def webui_token_count(body: TextBody, request: Request) -> dict:
    return {"length": len(await _encode(request, body.text, add_bos=True))}


@router.post("/v1/internal/decode")
async def webui_decode(body: DecodeBody, request: Request) -> dict:
    return {"text": _decode(request, body.tokens)}


@router.post("/v1/token/encode")
async def tabby_encode(body: TabbyEncodeBody, request: Request) -> dict:
    tokens = await _encode(request, body.text, add_bos=body.add_bos_token)
    return {"tokens": tokens, "length": len(tokens)}


@router.post("/v1/token/decode")
async def tabby_decode(body: DecodeBody, request: Request) -> dict:
    return {"text": _decode(request, body.tokens)}


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize(body: TokenizeBody, request: Request) -> dict:
    """vLLM's and Aphrodite's `{prompt}` (BOS added by default), or llama.cpp's `{content}` (none by default)."""
    if body.prompt is None and body.content is None:
        raise APIError(400, "Send the text to tokenize as 'prompt' (or 'content').", param="prompt")
    if body.prompt is not None:
        tokens = await _encode(request, body.prompt, add_bos=body.add_special_tokens is not False)
    else:
        tokens = await _encode(request, body.content or "", add_bos=bool(body.add_special))
    context = ready_engine(request).context_length
    return {"tokens": tokens, "count": len(tokens), "max_model_len": context}


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(body: DecodeBody, request: Request) -> dict:
    text = _decode(request, body.tokens)
    return {"prompt": text, "content": text}


@router.post("/api/extra/tokencount")
async def kobold_token_count(body: KoboldCountBody, request: Request) -> dict:
    tokens = await _encode(request, body.prompt, add_bos=False)
    return {"value": len(tokens), "ids": tokens}
