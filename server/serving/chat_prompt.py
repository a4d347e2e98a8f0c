"""A chat's prompt: rendered by `prompting` on a worker thread (a long chat takes a while), tokenized, and, with
`context_overflow: trim`, fitted into the context by leaving out the oldest messages in whole chunks (see
prompting/trimming.py for why chunks)."""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prompting import Message, PromptError, RenderedPrompt, Setting, render_prompt
from prompting.labels import TURN_SEPARATOR
from prompting.render import turn_text
from prompting.trimming import messages_to_leave_out
from server.engine.service import EngineService
from server.errors import APIError
from server.protocol.chat import ChatRequest
from server.serving.tokenizing import encoded, prompt_ids

# A trimmed chat is cut by this share of the context at a time.
TRIM_CHUNK_SHARE = 4


@dataclass(frozen=True)
class ChatPrompt:
    rendered: RenderedPrompt
    ids: list[int]  # BOS first
    trimmed: int  # the oldest messages left out


async def chat_prompt(body: ChatRequest, engine: EngineService, *, for_generation: bool) -> ChatPrompt:
    """The prompt of `body`. `for_generation`: a prompt no context can hold is refused before tokenizing (a
    render only shows it)."""
    messages, setting = body.conversation()
    render = _renderer(body, setting, engine)
    rendered = await asyncio.to_thread(render, messages)
    if body.context_overflow != "trim":
        ids = await (prompt_ids if for_generation else encoded)(engine, rendered.text, add_bos=True)
        if for_generation and len(ids) + (body.max_tokens or 1) > engine.context_length:
            wanted = f" plus {body.max_tokens} to generate" if body.max_tokens else ""
            raise APIError(
                400,
                f"This model's maximum context length is {engine.context_length} tokens; the chat has {len(ids)}"
                f'{wanted}. Send "context_overflow": "trim" to leave out the oldest messages, or shorten it.',
                param="messages",
                code="context_length_exceeded",
            )
        return ChatPrompt(rendered, ids, 0)
    ids = await encoded(engine, rendered.text, add_bos=True)
    chunk = engine.context_length // TRIM_CHUNK_SHARE
    reserve = body.max_tokens or chunk  # without max_tokens, room for a reply of a chunk
    excess = len(ids) + reserve - engine.context_length
    if excess <= 0:
        return ChatPrompt(rendered, ids, 0)
    counts = await asyncio.to_thread(_turn_tokens, engine, messages)
    leave = messages_to_leave_out(counts, excess, chunk)
    # The per-turn counts are close, not exact (tokens at turn boundaries, lore that moves): check, and leave out
    # one more message while it does not fit.
    while leave is not None and leave < len(messages):
        rendered = await asyncio.to_thread(render, messages[leave:])
        ids = await encoded(engine, rendered.text, add_bos=True)
        if len(ids) + reserve <= engine.context_length:
            return ChatPrompt(rendered, ids, leave)
        leave += 1
    raise APIError(
        400,
        f"This model's maximum context length is {engine.context_length} tokens; even the last message alone with "
        f"the opening turn and {reserve} tokens to generate does not fit. Shorten it or lower max_tokens.",
        param="messages",
        code="context_length_exceeded",
    )


def _renderer(
    body: ChatRequest, setting: Setting, engine: EngineService
) -> Callable[[Sequence[Message]], RenderedPrompt]:
    """Renders `body` with the given messages (all of them, or the newest ones); the lore is read from the
    request once."""
    lorebook, authors_note = body.lore()

    def render(messages: Sequence[Message]) -> RenderedPrompt:
        try:
            return render_prompt(
                messages,
                setting,
                body.speaker,
                special_tokens=engine.vocabulary.special_texts,
                lorebook=lorebook,
                authors_note=authors_note,
                count_tokens=lambda text: len(engine.vocabulary.encode(text, add_bos=False)),
            )
        except PromptError as error:
            raise APIError(400, str(error), param=error.param) from error

    return render


def _turn_tokens(engine: EngineService, messages: Sequence[Message]) -> list[int]:
    return [len(engine.vocabulary.encode(turn_text(m) + TURN_SEPARATOR, add_bos=False)) for m in messages]
