"""The async channel between the engine and the one HTTP handler waiting for a request's outputs: filled from the
engine process's reader thread (server/engine/client.py), or from the engine thread itself when an
`Engine` runs in this process."""

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from server.engine.request import GenerationOutput, GenerationRequest


class GenerationHandle:
    """Async iterator of one request's outputs. The engine side delivers; the event loop consumes. Cancelling
    (or leaving the iteration early) asks the engine to drop the request at its next step."""

    def __init__(self, sample_id: str, loop: asyncio.AbstractEventLoop, abort: Callable[[str], None]) -> None:
        self.sample_id = sample_id
        self.loop = loop
        self._abort = abort
        self._queue: asyncio.Queue[GenerationOutput] = asyncio.Queue()
        self._finished = False

    def deliver(self, output: GenerationOutput) -> None:
        """Called on the handle's event loop (see Outbox)."""
        self._queue.put_nowait(output)

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


class OutputSink(Protocol):
    """Where the engine thread puts each sample's outputs, and hands on what a step produced in one go."""

    def put(self, sample_id: str, output: GenerationOutput) -> None: ...

    def flush(self) -> None: ...


class Outbox:
    """Delivers to handles on event loops of this process: the outputs of one engine step, handed to each event
    loop in one call (waking a loop from another thread costs a system call and a turn of the loop, so once per
    step rather than once per token and request)."""

    def __init__(self) -> None:
        self._handles: dict[str, GenerationHandle] = {}
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[GenerationHandle, GenerationOutput]]] = {}

    def open(self, requests: list[GenerationRequest], abort: Callable[[str], None]) -> list[GenerationHandle]:
        """Handles on the calling event loop for these samples' outputs."""
        loop = asyncio.get_running_loop()
        handles = [GenerationHandle(request.sample_id, loop, abort) for request in requests]
        self._handles.update({handle.sample_id: handle for handle in handles})
        return handles

    def put(self, sample_id: str, output: GenerationOutput) -> None:
        """Called from the engine thread."""
        handle = self._handles[sample_id] if output.finish_reason is None else self._handles.pop(sample_id)
        self._pending.setdefault(handle.loop, []).append((handle, output))

    def flush(self) -> None:
        """Called from the engine thread at the end of each step (and after commands that end requests)."""
        pending, self._pending = self._pending, {}
        for loop, outputs in pending.items():
            # A closed event loop raises RuntimeError: then nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver_all, outputs)


def deliver_all(outputs: list[tuple[GenerationHandle, GenerationOutput]]) -> None:
    """Run on the handles' event loop."""
    for handle, output in outputs:
        handle.deliver(output)
