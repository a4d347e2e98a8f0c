"""Delivering a generation to its client: collected whole, or as server-sent events; either way a client that
goes away cancels its request."""

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from server.engine.handle import GenerationHandle
from server.engine.request import GenerationOutput
from server.errors import error_body

DISCONNECT_POLL_SECONDS = 0.25
# Not an HTTP standard code but the one proxies log for "client closed request"; nobody receives it.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    pass


async def collect(handles: list[GenerationHandle], request: Request) -> list[list[GenerationOutput]]:
    """Every output of each sample of a non-streamed request. Raises ClientDisconnected (after cancelling the
    samples) when the client closes the connection first."""

    async def gather(handle: GenerationHandle) -> list[GenerationOutput]:
        return [output async for output in handle]

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)

    gathering = asyncio.gather(*(gather(handle) for handle in handles))
    watching = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not gathering.done():
            raise ClientDisconnected
        return gathering.result()
    finally:
        gathering.cancel()
        watching.cancel()
        for handle in handles:
            handle.cancel()


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


def disconnected_response() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def sse_response(
    events: AsyncIterator[dict], headers: dict[str, str] | None = None, *, done: bool = True
) -> EventSourceResponse:
    """Streams JSON events as `data:` lines and ends with `data: [DONE]` (OpenAI's convention; llama.cpp's native
    stream just ends). sse-starlette cancels the generator when the client disconnects; the generator's cleanup
    cancels the request."""

    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield json.dumps(event, ensure_ascii=False)
        if done:
            yield "[DONE]"

    return EventSourceResponse(lines(), sep="\n", ping=15, headers=headers)


def error_event(message: str) -> dict:
    """An in-stream error in the shape SillyTavern and the openai package both show to the user."""
    return error_body(message, type="server_error")
