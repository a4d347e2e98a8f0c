"""The engine: one thread owns the model and serves every request from a command queue.

Each step admits waiting requests (prefill), advances every running request by one token (decode), samples all
rows in one batched call, and delivers the new text through each request's handle. Cancellations take effect
at the start of the next step, which also frees the request's KV cache.
"""

import asyncio
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass

import torch

from sampling import Sampler, SamplingParams
from server.engine.detokenizer import IncrementalDetokenizer, token_bytes_table, token_texts
from server.engine.handle import GenerationHandle
from server.engine.loader import LoadedModel
from server.engine.request import FinishReason, GenerationRequest
from server.engine.runner import ModelRunner
from server.engine.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters read by /health and the tests; written only by the engine thread."""

    running: int = 0
    waiting: int = 0
    cached_sequences: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0


@dataclass(frozen=True)
class _Add:
    sequence: Sequence


@dataclass(frozen=True)
class _Abort:
    request_id: str


class _Shutdown:
    pass


class Engine:
    def __init__(self, loaded: LoadedModel, *, max_running: int) -> None:
        self.model = loaded
        self.stats = EngineStats()
        self._max_running = max_running
        self._runner = ModelRunner(loaded.model, loaded.device)
        self._token_bytes = token_bytes_table(loaded.tokenizer, loaded.vocab_size)
        self._special_ids = frozenset(loaded.tokenizer.all_special_ids)
        # Texts user content must not contain: each would be read as its special token.
        self.special_token_texts = frozenset(
            [*loaded.tokenizer.all_special_tokens, *(t.content for t in loaded.tokenizer.added_tokens_decoder.values())]
        )
        self._sampler = Sampler(
            rows=max_running,
            capacity=loaded.context_length,
            vocab=token_texts(self._token_bytes, self._special_ids),
            tokenize=lambda text: loaded.tokenizer.encode(text, add_special_tokens=False),
            eos_ids=loaded.eos_ids,
            device=loaded.device,
        )
        self._sampler.prepare_breakers(SamplingParams().dry_sequence_breakers)
        self._commands: queue.Queue[_Add | _Abort | _Shutdown] = queue.Queue()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._commands.put(_Shutdown())
        self._thread.join()

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queues a request; call from the event loop, which will receive its outputs."""
        handle = GenerationHandle(request.request_id, asyncio.get_running_loop(), self.abort)
        sequence = Sequence(
            request=request,
            handle=handle,
            detokenizer=IncrementalDetokenizer(self._token_bytes, self._special_ids),
        )
        self._commands.put(_Add(sequence))
        return handle

    def abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))

    def _loop(self) -> None:
        with torch.inference_mode():
            while self._take_commands(block=not (self._running or self._waiting)):
                try:
                    self._step()
                except Exception as error:  # a failed step must not take the server down
                    log.exception("engine step failed")
                    for sequence in list(self._running):
                        self._finish(sequence, "", "error", error=f"generation failed: {error}")
        for sequence in [*self._running, *self._waiting]:
            self._finish(sequence, "", "error", error="the server is shutting down")

    def _take_commands(self, *, block: bool) -> bool:
        """Applies queued commands; False once shutdown was asked."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            match command:
                case _Add(sequence):
                    self._waiting.append(sequence)
                case _Abort(request_id):
                    self._drop(request_id)
                case _Shutdown():
                    return False
            self._update_stats()

    def _step(self) -> None:
        decoding = list(self._running)
        admitted = []
        while self._waiting and len(self._running) < self._max_running:
            sequence = self._waiting.popleft()
            self._running.append(sequence)
            sequence.row = self._sampler.add(sequence.request.prompt_ids, sequence.request.params)
            admitted.append(sequence)
        logits = []
        if decoding:
            logits.append(self._runner.decode([(s.id, s.last_token) for s in decoding]))
        logits.extend(self._runner.prefill(s.id, s.request.prompt_ids).unsqueeze(0) for s in admitted)
        stepped = decoding + admitted
        tokens = self._sampler.sample(torch.cat(logits), [s.row for s in stepped])
        for sequence, token in zip(stepped, tokens, strict=True):
            self._advance(sequence, token)
        self._update_stats()

    def _advance(self, sequence: Sequence, token: int) -> None:
        sequence.output_ids.append(token)
        self.stats.generated_tokens += 1
        if token in self.model.eos_ids:
            self._finish(sequence, sequence.stops.flush(), "stop")
            return
        scan = sequence.stops.push(sequence.detokenizer.push(token))
        if scan.stopped:
            self._finish(sequence, scan.release, "stop")
        elif self._out_of_room(sequence):
            self._finish(sequence, scan.release + sequence.stops.flush(), "length")
        elif scan.release:
            sequence.handle.deliver(sequence.output(scan.release))

    def _out_of_room(self, sequence: Sequence) -> bool:
        generated = len(sequence.output_ids)
        total = len(sequence.request.prompt_ids) + generated
        return generated >= sequence.request.max_tokens or total >= self.model.context_length

    def _finish(self, sequence: Sequence, text: str, reason: FinishReason, error: str | None = None) -> None:
        sequence.handle.deliver(sequence.output(text, reason, error))
        self._remove(sequence)
        self.stats.finished_requests += 1

    def _drop(self, request_id: str) -> None:
        for sequence in [*self._running, *self._waiting]:
            if sequence.id == request_id:
                self._remove(sequence)

    def _remove(self, sequence: Sequence) -> None:
        if sequence in self._running:
            self._running.remove(sequence)
        if sequence in self._waiting:
            self._waiting.remove(sequence)
        self._runner.release(sequence.id)
        if sequence.row >= 0:
            self._sampler.remove(sequence.row)

    def _update_stats(self) -> None:
        self.stats.running = len(self._running)
        self.stats.waiting = len(self._waiting)
        self.stats.cached_sequences = self._runner.cached_sequences
