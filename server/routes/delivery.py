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


async def collect(handle: GenerationHandle, request: Request) -> list[GenerationOutput]:
    """Every output of a non-streamed request. Raises ClientDisconnected (after cancelling the request) when the
    client closes the connection first."""

    async def gather() -> list[GenerationOutput]:
        return [output async for output in handle]

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)

    gathering, watching = asyncio.create_task(gather()), asyncio.create_task(watch())
    try:
        await asyncio.wait({gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
        if not gathering.done():
            raise ClientDisconnected
        return gathering.result()
    finally:
        gathering.cancel()
        watching.cancel()
        handle.cancel()


def disconnected_response() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def sse_response(events: AsyncIterator[dict]) -> EventSourceResponse:
    """Streams JSON events as `data:` lines and ends with `data: [DONE]`. sse-starlette cancels the generator
    when the client disconnects; the generator's cleanup cancels the request."""

    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield json.dumps(event, ensure_ascii=False)
        yield "[DONE]"

    return EventSourceResponse(lines(), sep="\n", ping=15)


def error_event(message: str) -> dict:
    """An in-stream error in the shape SillyTavern and the openai package both show to the user."""
    return error_body(message, type="server_error")
