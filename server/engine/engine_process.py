"""The engine in a process of its own (vLLM's V1 "engine core"): the model, the scheduler, sampling and output
processing run there, the HTTP server here, and the two share no interpreter lock. With the engine as a thread,
each token of each stream costs the engine Python work (detokenizing, stop scanning) that waits on the event loop
serving the streams, and the other way round (bench/RESULTS.md, "Does the serving layer keep up?").

Two pipes connect the processes. Down: commands (add requests, abort one, cancel all, shut down). Up: one message
per engine step with every output it produced, the engine's counters and the token timings. A reader thread here
hands each step's outputs to the waiting event loops in one call per loop. `EngineProcess` offers what the serving
layer uses of an engine: `submit`, `abort`, `cancel_all`, `shutdown`, `in_flight`, `alive`, `stats`, `vocabulary`,
`context_length`, `kv_budget`.

The child is started with `spawn` (a fresh interpreter: CUDA cannot be used in a forked one). It ignores SIGINT
and SIGTERM, which the server handles (drain, then `shutdown`; a terminal's Ctrl-C reaches both processes), and
stops when this process's end of the command pipe closes: at exit, or when this process dies.
"""

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections import defaultdict
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

from server.engine.engine import Engine
from server.engine.errors import ModelLoadError
from server.engine.handle import GenerationHandle, deliver_all
from server.engine.loader import ModelSpec, load
from server.engine.memory import KvBudget, kv_budget_bytes
from server.engine.request import GenerationError, GenerationOutput, GenerationRequest
from server.engine.stats import EngineStats
from server.engine.timings import TokenTimings
from server.engine.vocabulary import Vocabulary

log = logging.getLogger(__name__)

# After asking the child to shut down: time for it to end its requests and exit before it is killed.
_EXIT_SECONDS = 30


@dataclass(frozen=True)
class EngineOptions:
    """The engine's settings, as the child process builds it."""

    max_running: int
    prefix_cache_mb: int
    kv_cache_mb: int | None  # None: a share of the device's memory once the model is loaded
    memory_fraction: float
    prefill_chunk: int
    request_timeout: float | None
    log_content: bool
    decode_mode: str
    log_level: str


@dataclass(frozen=True)
class _Ready:
    vocabulary: Vocabulary
    context_length: int
    kv_budget: KvBudget
    stats: EngineStats


@dataclass(frozen=True)
class _Step:
    outputs: list[tuple[str, GenerationOutput]]
    stats: EngineStats
    first_tokens: list[float]  # seconds from submission to a request's first token
    token_gaps: list[float]  # seconds between two tokens of a request


class EngineProcess:
    def __init__(self, spec: ModelSpec, options: EngineOptions, timings: TokenTimings | None = None) -> None:
        self._spec = spec
        self._options = options
        self._timings = timings
        self._handles: dict[str, GenerationHandle] = {}
        self._lock = threading.Lock()  # the handles, and the command pipe (written from several threads)
        self._stopping = False
        self._exited = False
        self.stats = EngineStats()

    def start(self) -> None:
        """Starts the child and waits until its model is loaded; raises ModelLoadError when it cannot be."""
        context = multiprocessing.get_context("spawn")
        commands, self._commands = context.Pipe(duplex=False)
        self._results, results = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve, args=(self._spec, self._options, commands, results), name="rpserve-engine", daemon=True
        )
        self._process.start()
        atexit.register(self._stop_at_exit)
        commands.close()
        results.close()
        try:
            ready = self._results.recv()
        except EOFError:
            self._process.join()
            code = self._process.exitcode
            raise ModelLoadError(f"the engine process exited (code {code}) before it was ready") from None
        if isinstance(ready, ModelLoadError):
            self._process.join()
            raise ready
        self.vocabulary: Vocabulary = ready.vocabulary
        self.context_length: int = ready.context_length
        self.kv_budget: KvBudget = ready.kv_budget
        self.stats = ready.stats
        self._reader = threading.Thread(target=self._read, name="engine-results", daemon=True)
        self._reader.start()

    def resident_bytes(self) -> int | None:
        """The child's resident memory, where /proc tells it."""
        try:
            pages = int(Path(f"/proc/{self._process.pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return pages * os.sysconf("SC_PAGE_SIZE")

    @property
    def alive(self) -> bool:
        return not self._exited and self._process.is_alive()

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
            if self._exited:
                failed = GenerationOutput("", 0, 0, "error", GenerationError("the engine is not running", True))
                for handle in handles:
                    handle.deliver(failed)
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
        """Ends what still runs (each gets a retryable error) and stops the child."""
        self._stopping = True
        self._send(("shutdown",))
        self._process.join(_EXIT_SECONDS)
        if self._process.is_alive():
            log.error("the engine process did not exit within %d s; killing it", _EXIT_SECONDS)
            self._process.kill()
            self._process.join()
        self._reader.join()

    def _stop_at_exit(self) -> None:
        """The server exits without `shutdown` (it stopped while the model loaded, or failed): the child sees its
        command pipe close and stops; one that does not is killed."""
        self._stopping = True
        self._commands.close()
        self._process.join(_EXIT_SECONDS)
        if self._process.is_alive():
            self._process.kill()

    def _send(self, command: tuple) -> None:
        with self._lock:
            if not self._exited:
                with contextlib.suppress(OSError):  # the child is gone: the reader fails what was waiting
                    self._commands.send(command)

    def _read(self) -> None:
        """The reader thread: each step's outputs to their event loops, until the child exits."""
        while True:
            try:
                step: _Step = self._results.recv()
            except (EOFError, OSError):
                break
            self.stats = step.stats
            if self._timings is not None:
                for seconds in step.first_tokens:
                    self._timings.first_token(seconds)
                for seconds in step.token_gaps:
                    self._timings.token_gap(seconds)
            self._deliver(step.outputs)
        self._process.join()
        with self._lock:
            self._exited = True
            left = list(self._handles)
        if not self._stopping:
            log.error("the engine process exited unexpectedly (code %s)", self._process.exitcode)
        failed = GenerationOutput("", 0, 0, "error", GenerationError("the engine stopped; retry in a moment", True))
        self._deliver([(sample_id, failed) for sample_id in left])

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


class _StepSender:
    """The child's output sink: collects a step's outputs and token timings, sends them up in one message."""

    def __init__(self, results: Connection) -> None:
        self._results = results
        self._outputs: list[tuple[str, GenerationOutput]] = []
        self._first_tokens: list[float] = []
        self._token_gaps: list[float] = []
        self._sent_stats: EngineStats | None = None
        self.stats = EngineStats()  # the engine's, once it exists

    def put(self, handle: object, output: GenerationOutput) -> None:
        assert isinstance(handle, str)  # the child's handles are the sample ids
        self._outputs.append((handle, output))

    def first_token(self, seconds: float) -> None:
        self._first_tokens.append(seconds)

    def token_gap(self, seconds: float) -> None:
        self._token_gaps.append(seconds)

    def flush(self) -> None:
        if not self._outputs and self.stats == self._sent_stats:
            return
        self._sent_stats = replace(self.stats)
        step = _Step(self._outputs, self._sent_stats, self._first_tokens, self._token_gaps)
        self._outputs, self._first_tokens, self._token_gaps = [], [], []
        with contextlib.suppress(OSError):  # the server is gone; the command pipe's end stops this process
            self._results.send(step)


def _serve(spec: ModelSpec, options: EngineOptions, commands: Connection, results: Connection) -> None:
    """The child process: loads the model, then runs the engine on the commands until shut down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sender = _StepSender(results)
    try:
        engine = _engine(spec, options, sender)
    except ModelLoadError as error:
        results.send(error)
        return
    sender.stats = engine.stats
    results.send(_Ready(engine.vocabulary, engine.context_length, engine.kv_budget, replace(engine.stats)))
    engine.start()
    while True:
        try:
            command = commands.recv()
        except EOFError:  # the server is gone
            break
        match command:
            case ("add", requests):
                engine.enqueue(requests, [request.sample_id for request in requests])
            case ("abort", sample_id):
                engine.abort(sample_id)
            case ("cancel_all", reason):
                engine.cancel_all(reason)
            case ("shutdown",):
                break
    engine.shutdown()


def _engine(spec: ModelSpec, options: EngineOptions, sender: _StepSender) -> Engine:
    loaded = load(spec)
    if options.kv_cache_mb:
        budget = options.kv_cache_mb * 2**20
    else:
        budget = kv_budget_bytes(loaded.device, options.memory_fraction)
    return Engine(
        loaded,
        max_running=options.max_running,
        prefix_cache_mb=options.prefix_cache_mb,
        kv_budget_bytes=budget,
        prefill_chunk=options.prefill_chunk,
        request_timeout=options.request_timeout,
        timings=sender,
        log_content=options.log_content,
        decode_mode=options.decode_mode,
        outputs=sender,
    )
