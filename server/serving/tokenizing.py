"""Text to token ids off the event loop. The tokenizer takes about a second per 2 MB of text; on the event loop
that would stall every stream it serves, so it runs on a worker thread (the tokenizer releases the interpreter
lock while it works). A prompt too long for the context even if every token were the vocabulary's longest is
refused before any tokenizing."""

import asyncio

from server.engine.service import EngineService
from server.errors import APIError


async def encoded(engine: EngineService, text: str, *, add_bos: bool) -> list[int]:
    """The ids of any text (counting routes: no length bound beyond the body limit)."""
    return await asyncio.to_thread(engine.vocabulary.encode, text, add_bos=add_bos)


async def prompt_ids(engine: EngineService, text: str, *, add_bos: bool) -> list[int]:
    """The ids of a prompt to generate from: a 400 `context_length_exceeded` at once for a text no context of
    this model can hold."""
    most = engine.context_length * engine.vocabulary.max_token_chars
    if len(text) > most:
        raise APIError(
            400,
            f"This model's maximum context length is {engine.context_length} tokens; the prompt's {len(text):,} "
            f"characters are more than that many tokens can hold. Shorten the prompt.",
            param="prompt",
            code="context_length_exceeded",
        )
    return await encoded(engine, text, add_bos=add_bos)
