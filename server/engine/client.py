"""The server's side of the engine process (vLLM's V1 "engine core" client), torch-free: the model, scheduler,
sampling and output processing run in a process of their own (child.py), the HTTP server here, and the two share
no interpreter lock. With the engine as a thread, each token of each stream costs the engine Python work
(detokenizing, stop scanning) that waits on the event loop serving the streams, and the other way round
(bench/RESULTS.md, "Does the serving layer keep up?").

Two pipes connect the processes (pipe.py). A reader thread here hands each step's outputs to the waiting event
loops in one call per loop.

The engine process is supervised: when it dies (a crash, an out-of-memory kill, `kill -9`), what was in flight
fails with a retryable error, a new engine process is started (the model reloads from the local cache) and the
server serves again. When it dies `MAX_CRASHES` times within `CRASH_WINDOW_SECONDS`, or a new one cannot load its
model, `on_fatal` is told and the server exits non-zero, leaving it to the container's restart policy or the
process supervisor. The child is started with `spawn` (a fresh interpreter: CUDA cannot be used in a forked one).
"""

import asyncio
import atexit
import contextlib
import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from server.engine.handle import GenerationHandle, deliver_all
from server.engine.kv.budget import KvBudget
from server.engine.memory_plan import MemoryPlan
from server.engine.options import EngineOptions, ModelLoadError
from server.engine.pipe import Ready, Step
from server.engine.request import GenerationError, GenerationOutput, GenerationRequest
from server.engine.service import EngineStatus
from server.engine.stats import EngineStats, TokenTimings, continued
from server.engine.text.vocabulary import Vocabulary

log = logging.getLogger(__name__)

# After asking the child to shut down: time for it to end its requests and exit before it is killed.
EXIT_SECONDS = 10
# This many deaths of the engine process within the window end the server instead of another restart.
MAX_CRASHES = 3
CRASH_WINDOW_SECONDS = 300


class EngineClient:
    def __init__(
        self,
        options: EngineOptions,
        timings: TokenTimings | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        """`on_fatal`: called (from the reader thread) when the engine died and will not be restarted."""
        self._options = options
        self._timings = timings
        self._on_fatal = on_fatal
        self._handles: dict[str, GenerationHandle] = {}
        self._lock = threading.Lock()  # the handles, the status and the command pipe (written from several threads)
        self._stopping = False
        self._crashes: deque[float] = deque()
        self._earlier = EngineStats()  # the counters of engine processes that died
        self._current = EngineStats()
        self.status: EngineStatus = "loading"

    def start(self) -> None:
        """Starts the engine process and waits until its model is loaded; raises ModelLoadError when it cannot
        be."""
        self._launch()
        atexit.register(self._stop_at_exit)
        self._reader = threading.Thread(target=self._read, name="engine-results", daemon=True)
        self._reader.start()

    @property
    def stats(self) -> EngineStats:
        """The engine's counters since the server started, across restarts; its gauges now."""
        return continued(self._earlier, self._current)

    def resident_bytes(self) -> int | None:
        """The engine process's resident memory, where /proc tells it."""
        try:
            pages = int(Path(f"/proc/{self._process.pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return pages * os.sysconf("SC_PAGE_SIZE")

    @property
    def alive(self) -> bool:
        return self.status == "ok"

    @property
    def in_flight(self) -> int:
        """Samples submitted and not finished yet, running or waiting."""
        with self._lock:
            return len(self._handles)

    def submit(self, requests: list[GenerationRequest]) -> list[GenerationHandle]:
        """Queues the samples of one prompt; each handle receives its sample's outputs on the calling event loop."""
        loop = asyncio.get_running_loop()
        handles = [GenerationHandle(request.sample_id, loop, self.abort) for request in requests]
        with self._lock:
            if self.status != "ok":
                for handle in handles:
                    handle.deliver(_failed("The engine is not running; retry in a moment.", "engine_stopped"))
                return handles
            self._handles.update({handle.sample_id: handle for handle in handles})
            with contextlib.suppress(OSError):  # the child just died: the reader fails these with the rest
                self._commands.send(("add", requests))
        return handles

    def abort(self, sample_id: str) -> None:
        """Ends a sample at the engine's next step; it receives what it has generated so far."""
        self._send(("abort", sample_id))

    def cancel_all(self, reason: str) -> None:
        """Ends every request at the next step with a retryable error."""
        self._send(("cancel_all", reason))

    def shutdown(self) -> None:
        """Ends what still runs (each gets a retryable error) and stops the engine process."""
        self._stopping = True
        self._send(("shutdown",))
        self._process.join(EXIT_SECONDS)
        if self._process.is_alive():
            log.error("the engine process did not exit within %d s; killing it", EXIT_SECONDS)
            self._process.kill()
            self._process.join()
        self._reader.join()

    def _launch(self) -> None:
        """Starts an engine process and waits for its `Ready`; raises ModelLoadError when it sends none."""
        context = multiprocessing.get_context("spawn")
        commands, sender = context.Pipe(duplex=False)
        results, child_results = context.Pipe(duplex=False)
        process = context.Process(
            target=_child_entry, args=(self._options, commands, child_results), name="rpserve-engine", daemon=True
        )
        process.start()
        commands.close()
        child_results.close()
        try:
            ready = results.recv()
        except EOFError:
            process.join()
            raise ModelLoadError(f"the engine process exited (code {process.exitcode}) before it was ready") from None
        if isinstance(ready, ModelLoadError):
            process.join()
            raise ready
        assert isinstance(ready, Ready)
        self.vocabulary: Vocabulary = ready.vocabulary
        self.context_length: int = ready.context_length
        self.kv_budget: KvBudget = ready.kv_budget
        self.memory_plan: MemoryPlan = ready.memory_plan
        self._process: BaseProcess = process
        self._results: Connection = results
        with self._lock:
            self._commands: Connection = sender
            self._current = ready.stats
            self.status = "ok"

    def _stop_at_exit(self) -> None:
        """The server exits without `shutdown` (it stopped while the model loaded, or failed): the child sees its
        command pipe close and stops; one that does not is killed."""
        self._stopping = True
        self._commands.close()
        self._process.join(EXIT_SECONDS)
        if self._process.is_alive():
            self._process.kill()

    def _send(self, command: tuple) -> None:
        with self._lock:
            if self.status == "ok":
                with contextlib.suppress(OSError):  # the child is gone: the reader fails what was waiting
                    self._commands.send(command)

    def _read(self) -> None:
        """The reader thread: each step's outputs to their event loops; a dead engine process replaced."""
        while True:
            self._read_steps()
            self._process.join()
            if self._stopping or not self._restart():
                break
        self.status = "stopped"

    def _read_steps(self) -> None:
        while True:
            try:
                step: Step = self._results.recv()
            except (EOFError, OSError):
                return
            self._current = step.stats
            if self._timings is not None:
                for seconds in step.first_tokens:
                    self._timings.first_token(seconds)
                for seconds in step.token_gaps:
                    self._timings.token_gap(seconds)
            self._deliver(step.outputs)

    def _restart(self) -> bool:
        """After the engine process died on its own: fails what it held, starts another. False when the server
        must give up instead (after telling `on_fatal`)."""
        code = self._process.exitcode
        self._results.close()
        with self._lock:
            self.status = "restarting"
            left = list(self._handles)
            self._commands.close()
        self._earlier = continued(self._earlier, self._current, failed_requests=len(left), restarts=1)
        self._current = EngineStats()
        failed = _failed("The engine stopped; retry in a moment.", "engine_stopped")
        self._deliver([(sample_id, failed) for sample_id in left])
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes[0] < now - CRASH_WINDOW_SECONDS:
            self._crashes.popleft()
        if len(self._crashes) >= MAX_CRASHES:
            return self._give_up(
                f"the engine process died {len(self._crashes)} times within {CRASH_WINDOW_SECONDS} s "
                f"(last exit code {code}); stopping"
            )
        log.error("the engine process exited unexpectedly (code %s); %d failed; restarting it", code, len(left))
        started = time.monotonic()
        try:
            self._launch()
        except ModelLoadError as error:
            return self._give_up(f"the engine process could not be restarted: {error}")
        log.info("the engine process is back after %.1f s; serving again", time.monotonic() - started)
        if self._stopping:  # the server began to shut down while the model reloaded: `shutdown` found none to tell
            self._send(("shutdown",))
        return True

    def _give_up(self, message: str) -> bool:
        log.error("%s", message)
        if self._on_fatal is not None:
            self._on_fatal(message)
        return False

    def _deliver(self, outputs: list[tuple[str, GenerationOutput]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationHandle, GenerationOutput]]] = defaultdict(list)
        with self._lock:
            for sample_id, output in outputs:
                handle = self._handles.get(sample_id)
                if handle is None:
                    continue
                if output.finish_reason is not None:
                    del self._handles[sample_id]
                by_loop[handle.loop].append((handle, output))
        for loop, delivered in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(deliver_all, delivered)


def _failed(message: str, code: str) -> GenerationOutput:
    return GenerationOutput("", 0, 0, "error", GenerationError(message, retryable=True, code=code))


def _child_entry(options: EngineOptions, commands: Connection, results: Connection) -> None:
    """Runs in the engine process only. The child's module brings torch, so it is looked up by name there and
    never imported here."""
    importlib.import_module("server.engine.child").serve(options, commands, results)
