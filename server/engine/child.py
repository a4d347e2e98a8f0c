"""The engine process's own side: it loads the model, builds the engine and runs it on the commands that come
down the pipe from the server (client.py), sending each step's outputs up in one message.

It ignores SIGINT and SIGTERM, which the server handles (drain, then `shutdown`; a terminal's Ctrl-C reaches both
processes), and stops when the server's end of the command pipe closes: at exit, or when the server dies.
"""

import contextlib
import logging
import signal
import threading
from dataclasses import replace
from multiprocessing.connection import Connection

from tqdm import tqdm

from server.engine.engine import Engine
from server.engine.model.loader import load
from server.engine.options import EngineOptions, ModelLoadError
from server.engine.pipe import Ready, Step
from server.engine.request import GenerationOutput
from server.engine.stats import EngineStats


class StepSender:
    """The child's output sink and token timings: collects a step's outputs and timings, sends them up in one
    message."""

    def __init__(self, results: Connection) -> None:
        self._results = results
        self._outputs: list[tuple[str, GenerationOutput]] = []
        self._first_tokens: list[float] = []
        self._token_gaps: list[float] = []
        self._sent_stats: EngineStats | None = None
        self.stats = EngineStats()  # the engine's, once it exists

    def put(self, sample_id: str, output: GenerationOutput) -> None:
        self._outputs.append((sample_id, output))

    def first_token(self, seconds: float) -> None:
        self._first_tokens.append(seconds)

    def token_gap(self, seconds: float) -> None:
        self._token_gaps.append(seconds)

    def flush(self) -> None:
        if not self._outputs and self.stats == self._sent_stats:
            return
        self._sent_stats = replace(self.stats)
        step = Step(self._outputs, self._sent_stats, self._first_tokens, self._token_gaps)
        self._outputs, self._first_tokens, self._token_gaps = [], [], []
        with contextlib.suppress(OSError):  # the server is gone; the command pipe's end stops this process
            self._results.send(step)


def serve(options: EngineOptions, commands: Connection, results: Connection) -> None:
    """The engine process's entry: loads the model, then runs the engine on the commands until shut down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Loading's progress bars would otherwise make an interprocess lock, a semaphore that a killed engine process
    # leaves behind (and the server then warns about at exit).
    tqdm.set_lock(threading.RLock())
    sender = StepSender(results)
    try:
        engine = Engine(load(options.model), options, outputs=sender, timings=sender)
    except ModelLoadError as error:
        results.send(error)
        return
    sender.stats = engine.stats
    ready = Ready(engine.vocabulary, engine.context_length, engine.kv_budget, engine.memory_plan, replace(engine.stats))
    results.send(ready)
    engine.start()
    while True:
        try:
            command = commands.recv()
        except EOFError:  # the server is gone
            break
        match command:
            case ("add", requests):
                engine.enqueue(requests)
            case ("abort", sample_id):
                engine.abort(sample_id)
            case ("cancel_all", reason):
                engine.cancel_all(reason)
            case ("shutdown",):
                break
    engine.shutdown()
