"""The engine: one thread owns the model and serves every request from a command queue.

Each step admits waiting requests while rows are free, advances every prefilled request by one token in one
batched forward, prefills new prompts in chunks between those steps, samples all rows in one batched call, and
delivers the new text through each request's handle. Cancellations take effect at the start of the next step,
which also frees the request's rows; a finished request's KV cache goes to the prefix cache.
"""

import asyncio
import dataclasses
import json
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sampling import Sampler, SamplingParams
from server.engine.detokenizer import IncrementalDetokenizer, token_bytes_table, token_texts
from server.engine.errors import ModelLoadError
from server.engine.handle import GenerationHandle
from server.engine.host_memory import release_free_host_memory
from server.engine.loader import LoadedModel
from server.engine.memory import batch_footprint, reservation
from server.engine.request import FinishReason, GenerationRequest, TokenLogprob
from server.engine.runner import ModelRunner
from server.engine.sequence import Sequence
from server.engine.timings import TokenTimings

log = logging.getLogger(__name__)
content_log = logging.getLogger("rpserve.content")


@dataclass
class EngineStats:
    """Counters read by /health and the tests; written only by the engine thread."""

    running: int = 0
    waiting: int = 0
    cached_sequences: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0
    prefilled_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from the prefix cache instead
    prefix_cache_entries: int = 0
    prefix_cache_tokens: int = 0
    prompt_tokens: int = 0  # of every admitted request
    batch_cache_tokens: int = 0  # KV positions allocated for the running requests, padding included
    failed_requests: int = 0
    timed_out_requests: int = 0


@dataclass(frozen=True)
class _Add:
    sequence: Sequence


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _AbortClient:
    client: str
    genkey: str | None


@dataclass(frozen=True)
class _CancelAll:
    reason: str


class _Shutdown:
    pass


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_running: int,
        prefix_cache_mb: int,
        kv_budget_bytes: int,
        prefill_chunk: int = 512,
        request_timeout: float | None = None,
        timings: TokenTimings | None = None,
        log_content: bool = False,
        static_cache: bool = False,
    ) -> None:
        self.model = loaded
        self.stats = EngineStats()
        self._max_running = max_running
        self._prefill_chunk = prefill_chunk
        self._request_timeout = request_timeout
        self._timings = timings
        self._log_content = log_content
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._prefilling: deque[list[Sequence]] = deque()
        self.kv_bytes_per_token = kv_bytes_per_token(loaded)
        # Running requests and the prefix cache share one budget; the prefix cache never holds more than its cap.
        self.kv_budget_tokens = kv_budget_bytes // self.kv_bytes_per_token
        self.prefix_budget_tokens = min(prefix_cache_mb * 2**20 // self.kv_bytes_per_token, self.kv_budget_tokens)
        static = None
        if static_cache:
            # Every slot gets an equal share of what the prefix cache leaves, which bounds the context.
            width = min(loaded.context_length + 1, (self.kv_budget_tokens - self.prefix_budget_tokens) // max_running)
            if width < 2:
                raise ModelLoadError("--static-cache: the KV budget leaves no room for a request; raise it")
            static = (max_running, width)
            self.model = loaded = dataclasses.replace(loaded, context_length=width - 1)
        self._runner = ModelRunner(
            loaded.model, loaded.device, prefix_budget_tokens=self.prefix_budget_tokens, static=static
        )
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
        self._commands: queue.Queue[_Add | _Abort | _AbortClient | _CancelAll | _Shutdown] = queue.Queue()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    def token_text(self, token_id: int) -> str:
        """One token's own text (a token holding part of a UTF-8 character shows replacement characters)."""
        return self._token_bytes[token_id].decode("utf-8", errors="replace")

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self) -> None:
        self._commands.put(_Shutdown())
        self._thread.join()

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queues a request; call from the event loop, which will receive its outputs."""
        return self.submit_samples([request])[0]

    @property
    def in_flight(self) -> int:
        """Requests submitted and not finished yet, running or waiting (exact, unlike the step-time stats)."""
        with self._in_flight_lock:
            return self._in_flight

    def submit_samples(self, requests: list[GenerationRequest]) -> list[GenerationHandle]:
        """Queues several samples of one prompt (n > 1): they are admitted together and share one prefill."""
        loop = asyncio.get_running_loop()
        with self._in_flight_lock:
            self._in_flight += len(requests)
        group = requests[0].request_id if len(requests) > 1 else None
        now = time.monotonic()
        deadline = now + self._request_timeout if self._request_timeout else None
        loaded_context = self.model.context_length
        handles = []
        for request in requests:
            handle = GenerationHandle(request.request_id, loop, self.abort)
            skipped = self._special_ids if request.skip_special_tokens else frozenset()
            sequence = Sequence(
                request=request,
                handle=handle,
                detokenizer=IncrementalDetokenizer(self._token_bytes, skipped),
                group=group,
                submitted_at=now,
                deadline=deadline,
                reservation=reservation(len(request.prompt_ids), request.max_tokens, loaded_context),
            )
            self._commands.put(_Add(sequence))
            handles.append(handle)
        return handles

    def abort(self, request_id: str) -> None:
        """Ends a request at the next step; it receives what it has generated so far, finish reason "stop"."""
        self._commands.put(_Abort(request_id))

    def abort_client(self, client: str, genkey: str | None = None) -> None:
        """KoboldCpp's abort: ends that client's generations (only the one named `genkey`, when given)."""
        self._commands.put(_AbortClient(client, genkey))

    def cancel_all(self, reason: str) -> None:
        """Ends every request at the next step with an error (shutdown after the drain timeout)."""
        self._commands.put(_CancelAll(reason))

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                idle = not (self._running or self._waiting)
                if idle:
                    release_free_host_memory(self.model.device)
                if not self._take_commands(block=idle):
                    break
                try:
                    self._step()
                except Exception as error:  # the last resort: each part of the step isolates its own faults
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
                    self._drop(lambda sequence, wanted=request_id: sequence.id == wanted)
                case _AbortClient(client, genkey):
                    self._drop(
                        lambda s, c=client, k=genkey: s.request.client == c and (k is None or s.request.genkey == k)
                    )
                case _CancelAll(reason):
                    for sequence in [*self._running, *self._waiting]:
                        self._finish(sequence, sequence.stops.flush(), "error", error=reason, error_status=503)
                case _Shutdown():
                    return False
            self._update_stats()

    def _step(self) -> None:
        """One decode step for every prefilled request, then prompt prefill within the chunk budget (all of it
        when nothing is decoding), so a long new prompt never stalls the streams already running. A fault fails
        only the requests it concerns; the others go on."""
        self._expire()
        decoding = [s for s in self._running if s.prefilled]
        self._prefilling.extend(self._admit())
        logits, stepped = [], []
        if decoding and (decoded := self._decode(decoding)) is not None:
            logits.append(decoded)
            stepped.extend(decoding)
        budget = self._prefill_chunk if decoding else sys.maxsize
        while self._prefilling and budget > 0:
            group = self._prefilling[0]
            spent = min(budget, self._runner.prefill_remaining(group[0].id))
            try:
                first = self._runner.prefill_chunk(group[0].id, budget)
            except Exception as error:  # this prompt alone: its own cache, its own forward
                if not isinstance(error, torch.OutOfMemoryError):
                    log.exception("prefill of request %s failed", group[0].id)
                self._fail(group, _describe(error))
                continue
            budget -= spent
            if first is None:
                break
            self._prefilling.popleft()
            for sibling in group[1:]:
                self._runner.fork(group[0].id, sibling.id)
            for sequence in group:
                sequence.prefilled = True
            logits.extend([first.unsqueeze(0)] * len(group))
            stepped.extend(group)
        if stepped:
            batch = torch.cat(logits)
            tokens = self._sample(batch, stepped)
            self._record_logprobs(batch, stepped, tokens)
            for sequence, token in zip(stepped, tokens, strict=True):
                if isinstance(token, str):
                    self._fail([sequence], token)
                    continue
                try:
                    self._advance(sequence, token)
                except Exception as error:
                    log.exception("request %s: reading its new token failed", sequence.id)
                    self._fail([sequence], str(error))
        self._update_stats()

    def _decode(self, decoding: list[Sequence]) -> torch.Tensor | None:
        """The batched decode forward; None when it failed, after failing the requests at fault (the others retry
        at the next step: the runner has rolled the batch cache back)."""
        try:
            return self._runner.decode([(s.id, s.last_token) for s in decoding])
        except torch.OutOfMemoryError:
            # The longest row sets the batch's width: dropping it frees the most.
            longest = max(decoding, key=lambda s: len(s.request.prompt_ids) + len(s.output_ids))
            log.warning("out of memory in a decode step of %d rows; failing the longest", len(decoding))
            self._fail([longest], "out of memory while growing its cache")
            return None
        except Exception as error:  # the model itself failed: no row can be told apart from the others
            log.exception("decode step failed")
            self._fail(decoding, str(error))
            return None

    def _sample(self, logits: torch.Tensor, stepped: list[Sequence]) -> list[int | str]:
        """One token per row, or the reason that row failed: its logits were NaN or infinite, or sampling it
        raised (found by sampling row by row after the batched call raised)."""
        rows = [s.row for s in stepped]
        bans = [s.guard.bans_for(len(s.output_ids)) if s.guard else frozenset() for s in stepped]
        try:
            drawn = self._sampler.sample(logits, rows, bans)
        except Exception:
            log.exception("batched sampling failed; sampling row by row")
            drawn = []
            for i, row in enumerate(rows):
                try:
                    drawn.extend(self._sampler.sample(logits[i : i + 1], [row], [bans[i]]))
                except Exception as error:
                    drawn.append(f"sampling failed: {error}")
        invalid = "the model produced invalid logits (NaN or infinity) for this request"
        return [invalid if token is None else token for token in drawn]

    def _fail(self, sequences: list[Sequence], reason: str) -> None:
        for sequence in list(sequences):
            log.error("request %s failed: %s", sequence.id, reason)
            self.stats.failed_requests += 1
            self._finish(sequence, "", "error", error=f"generation failed: {reason}")
        _release_device_memory(self.model.device)

    def _expire(self) -> None:
        """`--request-timeout`: a request past its deadline ends with what it has (finish reason "length"); one
        that has generated nothing yet gets a 503 to retry."""
        now = time.monotonic()
        for sequence in [*self._running, *self._waiting]:
            if sequence.deadline is None or now < sequence.deadline:
                continue
            log.info("request %s timed out after %.1f s", sequence.id, now - sequence.submitted_at)
            self.stats.timed_out_requests += 1
            if sequence.output_ids:
                self._finish(sequence, sequence.stops.flush(), "length")
            else:
                message = f"The request timed out after {self._request_timeout:g} s before generating anything."
                self._finish(sequence, "", "error", error=message, error_status=503)

    def _admit(self) -> list[list[Sequence]]:
        """Moves waiting requests into the running set while sampler rows are free, a sample group at once."""
        admitted = []
        while self._waiting:
            group = [self._waiting[0]]
            if group[0].group is not None:
                group = [s for s in self._waiting if s.group == group[0].group]
            if len(self._running) + len(group) > self._max_running or not self._make_room(group):
                break
            for sequence in group:
                self._waiting.remove(sequence)
                self._running.append(sequence)
                sequence.row = self._sampler.add(sequence.request.prompt_ids, sequence.request.params)
                self.stats.prompt_tokens += len(sequence.request.prompt_ids)
            self._runner.start_prefill(group[0].id, group[0].request.prompt_ids)
            admitted.append(group)
        return admitted

    def _make_room(self, group: list[Sequence]) -> bool:
        """Whether the KV budget holds the running requests and `group` at their widest, evicting prefix-cache
        entries to make it so. A group that needs more than the whole budget runs alone (it may then fail with an
        out-of-memory error, alone): it never waits forever."""
        needed = batch_footprint([s.reservation for s in [*self._running, *group]])
        if needed > self.kv_budget_tokens and self._running:
            return False
        self._fit_prefix_cache(needed)
        return True

    def _fit_prefix_cache(self, running_tokens: int) -> None:
        """Shrinks the prefix cache to what the running requests' footprint leaves of the budget."""
        self._runner.prefix_cache.evict_to(max(self.kv_budget_tokens - running_tokens, 0))

    def _record_logprobs(self, logits: torch.Tensor, stepped: list[Sequence], tokens: list[int | str]) -> None:
        wanted = [i for i, s in enumerate(stepped) if s.request.logprobs is not None and isinstance(tokens[i], int)]
        if not wanted:
            return
        index = torch.tensor(wanted, device=logits.device)
        logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
        chosen = logprobs.gather(1, torch.tensor([tokens[i] for i in wanted], device=logits.device).unsqueeze(1))
        widest = max(stepped[i].request.logprobs or 0 for i in wanted)
        top = logprobs.topk(widest, dim=-1) if widest else None
        chosen_values = chosen.squeeze(1).tolist()
        top_values, top_ids = (top.values.tolist(), top.indices.tolist()) if top else ([], [])
        for position, i in enumerate(wanted):
            count = stepped[i].request.logprobs or 0
            alternatives = (
                tuple(zip(top_ids[position][:count], top_values[position][:count], strict=True)) if top else ()
            )
            stepped[i].pending_logprobs.append(TokenLogprob(tokens[i], chosen_values[position], alternatives))

    def _advance(self, sequence: Sequence, token: int) -> None:
        if sequence.guard:
            sequence.guard.before_token(sequence.detokenizer, sequence.stops)
        sequence.output_ids.append(token)
        self.stats.generated_tokens += 1
        self._observe_token(sequence)
        if token in self.model.eos_ids:
            self._finish(sequence, sequence.stops.flush(), "stop", ended_by_token=True)
            return
        scan = sequence.stops.push(sequence.detokenizer.push(token))
        if scan.banned_at is not None:
            self._back_off(sequence, scan.banned_at)
        elif scan.stopped:
            self._finish(sequence, scan.release, "stop", ended_by_token=True, stop_string=scan.stop)
        elif self._out_of_room(sequence):
            self._finish(sequence, scan.release + sequence.stops.flush(), "length")
        else:
            text = sequence.guard.sendable(scan, sequence.stops) if sequence.guard else scan.release
            if text:
                sequence.handle.deliver(sequence.output(text))

    def _observe_token(self, sequence: Sequence) -> None:
        now = time.monotonic()
        if self._timings is not None:
            if sequence.last_token_at is None:
                self._timings.first_token(now - sequence.submitted_at)
            else:
                self._timings.token_gap(now - sequence.last_token_at)
        sequence.last_token_at = now

    def _back_off(self, sequence: Sequence, banned_at: int) -> None:
        """A banned string appeared: discard the tokens from the one that began it and sample that one again."""
        guard = sequence.guard
        assert guard is not None  # only requests with banned strings report one
        if guard.exhausted:
            self._finish(sequence, "", "stop")
            return
        position = guard.back_off(banned_at, sequence.output_ids, sequence.detokenizer, sequence.stops)
        discarded = len(sequence.output_ids) - position
        del sequence.output_ids[position:]
        del sequence.pending_logprobs[max(len(sequence.pending_logprobs) - discarded, 0) :]
        history = [*sequence.request.prompt_ids, *sequence.output_ids]
        # The cache keeps every position but the last token's, which the next step feeds again.
        self._runner.crop(sequence.id, len(history) - 1)
        self._sampler.rewind(sequence.row, history, generated=position)

    def _out_of_room(self, sequence: Sequence) -> bool:
        generated = len(sequence.output_ids)
        total = len(sequence.request.prompt_ids) + generated
        return generated >= sequence.request.max_tokens or total >= self.model.context_length

    def _finish(
        self,
        sequence: Sequence,
        text: str,
        reason: FinishReason,
        error: str | None = None,
        *,
        error_status: int = 500,
        ended_by_token: bool = False,
        stop_string: str | None = None,
    ) -> None:
        if ended_by_token and sequence.pending_logprobs:
            sequence.pending_logprobs.pop()  # the EOS or stop token is not part of the returned text
        if sequence.guard:
            text = sequence.guard.flush(text)
        sequence.handle.deliver(sequence.output(text, reason, error, stop_string, error_status))
        if self._log_content:
            self._log_text(sequence, reason)
        self._remove(sequence, keep_cache=reason != "error")
        with self._in_flight_lock:
            self._in_flight -= 1
        self.stats.finished_requests += 1

    def _log_text(self, sequence: Sequence, reason: FinishReason) -> None:
        """`--log-content`: the prompt and output text, which are private and logged only when asked."""
        decode = self.model.tokenizer.decode
        record = {
            "request_id": sequence.request.log_id,
            "generation_id": sequence.id,
            "finish_reason": reason,
            "prompt": decode(sequence.request.prompt_ids),
            "output": decode(sequence.output_ids),
        }
        content_log.info("%s", json.dumps(record, ensure_ascii=False))

    def _drop(self, matches: Callable[[Sequence], bool]) -> None:
        for sequence in [*self._running, *self._waiting]:
            if matches(sequence):
                self._finish(sequence, sequence.stops.flush(), "stop")

    def _remove(self, sequence: Sequence, *, keep_cache: bool = False) -> None:
        self._leave_prefill(sequence)
        if sequence in self._running:
            self._running.remove(sequence)
        if sequence in self._waiting:
            self._waiting.remove(sequence)
        # The cache holds the prompt and every generated token but the last (sampled, never fed).
        held = [*sequence.request.prompt_ids, *sequence.output_ids][:-1] if sequence.output_ids else None
        self._runner.release(sequence.id, held if keep_cache else None)
        if sequence.row >= 0:
            self._sampler.remove(sequence.row)
        self._fit_prefix_cache(batch_footprint([s.reservation for s in self._running]))

    def _leave_prefill(self, sequence: Sequence) -> None:
        """Takes a request out of its prefill group; a sample group that loses its leader restarts with the next."""
        for group in list(self._prefilling):
            if sequence not in group:
                continue
            group.remove(sequence)
            if not group:
                self._prefilling.remove(group)
            elif group[0].id not in self._runner.pending_ids:
                self._runner.start_prefill(group[0].id, group[0].request.prompt_ids)

    def _update_stats(self) -> None:
        self.stats.running = len(self._running)
        self.stats.waiting = len(self._waiting)
        self.stats.cached_sequences = self._runner.cached_sequences
        self.stats.prefilled_tokens = self._runner.prefilled_tokens
        self.stats.reused_tokens = self._runner.reused_tokens
        self.stats.prefix_cache_entries = len(self._runner.prefix_cache)
        self.stats.prefix_cache_tokens = self._runner.prefix_cache.tokens
        self.stats.batch_cache_tokens = self._runner.batch_tokens


def _describe(error: Exception) -> str:
    return "out of memory" if isinstance(error, torch.OutOfMemoryError) else str(error)


def _release_device_memory(device: torch.device) -> None:
    """After a failure (out of memory, most likely): hand the freed blocks back so that the next step can use
    them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer."""
    config = loaded.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * loaded.dtype.itemsize
