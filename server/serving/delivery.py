"""Delivering a generation to its client: collected whole, or as server-sent events; either way a client that
goes away cancels its request."""

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from server.engine.request import GenerationOutput
from server.errors import ClientDisconnected, error_body

DISCONNECT_POLL_SECONDS = 0.25


async def collect(streams: list[AsyncIterator[GenerationOutput]], request: Request) -> list[list[GenerationOutput]]:
    """Every output of each sample of a non-streamed request. Raises ClientDisconnected when the client closes
    the connection first; the caller cancels the samples."""

    async def gather(stream: AsyncIterator[GenerationOutput]) -> list[GenerationOutput]:
        return [output async for output in stream]

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)

    gathering = [asyncio.ensure_future(gather(stream)) for stream in streams]
    watching = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({*gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
        while not watching.done() and not all(task.done() for task in gathering):
            await asyncio.wait({*gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not all(task.done() for task in gathering):
            raise ClientDisconnected
        return [task.result() for task in gathering]
    finally:
        for task in [*gathering, watching]:
            task.cancel()
        # Retrieved, so that a cancelled task never reports "exception was never retrieved".
        await asyncio.gather(*gathering, watching, return_exceptions=True)


async def merged(streams: list[AsyncIterator[GenerationOutput]]) -> AsyncIterator[tuple[int, GenerationOutput]]:
    """The outputs of several samples as they come, each with its sample's index."""
    queue: asyncio.Queue[tuple[int, GenerationOutput] | None] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationOutput]) -> None:
        try:
            async for output in stream:
                await queue.put((index, output))
        finally:
            await queue.put(None)

    pumps = [asyncio.ensure_future(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        remaining = len(pumps)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield item
    finally:
        for task in pumps:
            task.cancel()


def sse_response(
    events: AsyncIterator[dict | ServerSentEvent], headers: dict[str, str] | None = None, *, done: bool = True
) -> EventSourceResponse:
    """Streams JSON events as `data:` lines (and comments as they are) and ends with `data: [DONE]` (OpenAI's
    convention; llama.cpp's native stream just ends). sse-starlette cancels the generator when the client
    disconnects; the generator's cleanup cancels the request."""

    async def lines() -> AsyncIterator[str | ServerSentEvent]:
        async for event in events:
            yield event if isinstance(event, ServerSentEvent) else json.dumps(event, ensure_ascii=False)
        if done:
            yield "[DONE]"

    return EventSourceResponse(lines(), sep="\n", ping=15, headers=headers)


def progress_comment(output: GenerationOutput) -> ServerSentEvent:
    """How much of a long prompt is read, as an SSE comment: every SSE client (the openai package, SillyTavern)
    skips comments; the built-in page shows it in the reply's bubble."""
    return ServerSentEvent(comment=f"reading prompt {output.prompt_read}/{output.prompt_tokens}")


def error_event(message: str, code: str) -> dict:
    """An in-stream error in the shape SillyTavern and the openai package both show to the user."""
    return error_body(message, type="server_error", code=code)
