"""The async channel between the engine thread and the one HTTP handler waiting for a request's outputs."""

import asyncio
import contextlib
from collections.abc import Callable

from server.engine.request import GenerationOutput


class GenerationHandle:
    """Async iterator of one request's outputs. The engine thread delivers; the event loop consumes. Cancelling
    (or leaving the iteration early) asks the engine to drop the request at its next step."""

    def __init__(self, sample_id: str, loop: asyncio.AbstractEventLoop, abort: Callable[[str], None]) -> None:
        self.sample_id = sample_id
        self._loop = loop
        self._abort = abort
        self._queue: asyncio.Queue[GenerationOutput] = asyncio.Queue()
        self._finished = False

    def deliver(self, output: GenerationOutput) -> None:
        """Called from the engine thread."""
        # A closed event loop raises RuntimeError: then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, output)

    def __aiter__(self) -> "GenerationHandle":
        return self

    async def __anext__(self) -> GenerationOutput:
        if self._finished:
            raise StopAsyncIteration
        output = await self._queue.get()
        self._finished = output.finish_reason is not None
        return output

    def cancel(self) -> None:
        if not self._finished:
            self._finished = True
            self._abort(self.sample_id)
