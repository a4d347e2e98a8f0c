"""The engine: one thread owns the model and serves every request from a command queue.

Each step carries out the scheduler's plan (scheduler.py): end the requests past their deadline, give the admitted
ones sampler slots, advance every prefilled request by one token in one batched forward, run the planned prefill
chunks (on the CPU kernels, all of these in one mixed forward: forward/mixed_step.py), sample all rows in one
batched call, and let the output processor turn each token into text for its request; then report back to the
scheduler what was prefilled and what ended. Commands (new requests, aborts) take effect between steps. A fault
fails only the requests it concerns; the others go on (a mixed forward that fails is run again in its parts).

The server runs it inside the engine process (child.py: `enqueue`, outputs sent up a pipe); `submit` delivers to
asyncio handles in this process instead (bench/gpu.py measures it so, without the pipe).
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass

import torch

from sampling import SamplingParams
from sampling.sampler import Sampler
from server.engine.forward.quantization import activation_dtype
from server.engine.forward.runner import ModelRunner
from server.engine.forward.self_check import CHECK_STEPS, captured_decode_problem
from server.engine.handle import GenerationHandle, Outbox, OutputSink
from server.engine.kv.budget import KvBudget, reservation
from server.engine.kv.kv_format import KvFormat
from server.engine.kv.memory import kv_budget_bytes, release_free_host_memory
from server.engine.memory_plan import PLAN_CHAT_TOKENS, MemoryPlan, chats_that_fit
from server.engine.model.loader import LoadedModel, model_bytes
from server.engine.options import EngineOptions, ModelLoadError
from server.engine.output_processor import BackOff, Ending, OutputProcessor
from server.engine.request import GenerationError, GenerationRequest
from server.engine.request_state import RequestState
from server.engine.scheduler import PrefillWork, Scheduler
from server.engine.stats import EngineStats, TokenTimings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Add:
    states: list[RequestState]


@dataclass(frozen=True)
class _Abort:
    sample_id: str


@dataclass(frozen=True)
class _CancelAll:
    reason: str


class _Shutdown:
    pass


def context_length(loaded: LoadedModel, max_model_len: int | None) -> int:
    """The context the engine allows: `--max-model-len`, which may not exceed the model's own."""
    if max_model_len is None:
        return loaded.context_length
    if max_model_len > loaded.context_length:
        raise ModelLoadError(
            f"--max-model-len {max_model_len} is more than the model's context of {loaded.context_length} tokens"
        )
    return max_model_len


@dataclass(frozen=True)
class SamplingFailed:
    """A row that could not be sampled, and why."""

    reason: str


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        options: EngineOptions,
        outputs: OutputSink | None = None,
        timings: TokenTimings | None = None,
    ) -> None:
        """`outputs`: where requests' outputs go (by default to their handles' event loops, see `submit`)."""
        self.stats = EngineStats()
        self.vocabulary = loaded.vocabulary
        budget_bytes = (options.kv_cache_mb or 0) * 2**20 or kv_budget_bytes(loaded.device, options.memory_fraction)
        kv_format = KvFormat(options.kv_cache_dtype, loaded.dtype)
        self.kv_budget = KvBudget.of(
            budget_bytes, kv_format.bytes_per_token(loaded.model.config), options.prefix_cache_mb
        )
        weights_bytes = model_bytes(loaded.model)  # before the runner lays the weights out for its kernels
        self.context_length = context_length(loaded, options.max_model_len)
        self._device = loaded.device
        self._request_timeout = options.request_timeout
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        mode = options.decode_mode
        captured = mode == "captured" or (mode == "auto" and loaded.device.type == "cuda")
        self._runner = ModelRunner(
            loaded.model,
            loaded.device,
            prefix_budget_tokens=self.kv_budget.prefix_tokens,
            context_length=self.context_length,
            captured=captured,
            packed_weights=options.packed_weights,
            kv_cache_dtype=options.kv_cache_dtype,
            kernel_cache=options.model.cache_dir if options.cpu_kernels else None,
        )
        chat_tokens = min(PLAN_CHAT_TOKENS, self.context_length)
        self.memory_plan = MemoryPlan(
            weights_bytes=weights_bytes,
            quantization=loaded.quantization.method if loaded.quantization else "none",
            kv_cache_dtype=options.kv_cache_dtype,
            kv_bytes_per_token=self.kv_budget.bytes_per_token,
            kv_budget_bytes=self.kv_budget.tokens * self.kv_budget.bytes_per_token,
            kv_budget_tokens=self.kv_budget.tokens,
            chat_tokens=chat_tokens,
            chats=chats_that_fit(self._runner.footprint, self.kv_budget.tokens, chat_tokens),
        )
        if captured:
            self._check_captured_decode(loaded)
        self.stats.decode_mode = self._runner.decode_mode
        if loaded.quantization is not None:
            self.stats.quantization = loaded.quantization.method
            self.stats.quantization_kl = round(loaded.quantization.mean_kl, 6)
            self.stats.quantization_top1 = round(loaded.quantization.top1_agreement, 4)
        self._scheduler = Scheduler(
            max_running=options.max_running,
            prefill_chunk=options.prefill_chunk,
            budget=self.kv_budget,
            prefix_cache=self._runner.prefix_cache,
            footprint=self._runner.footprint,
        )
        self._outbox = outputs or Outbox()
        self._outputs = OutputProcessor(
            self.vocabulary, self.context_length, self._outbox, timings, options.log_content
        )
        self._sampler = Sampler(
            slots=options.max_running,
            capacity=self.context_length,
            vocab=self.vocabulary.texts(),
            tokenize=self.vocabulary.tokenize_plain,
            eos_ids=self.vocabulary.eos_ids,
            device=loaded.device,
        )
        self._sampler.prepare_breakers(SamplingParams().dry_sequence_breakers)
        self._commands: queue.Queue[_Add | _Abort | _CancelAll | _Shutdown] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    # The public surface, called from other threads.

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self) -> None:
        self._commands.put(_Shutdown())
        self._thread.join()

    @property
    def in_flight(self) -> int:
        """Samples submitted and not finished yet, running or waiting (exact, unlike the step-time stats)."""
        with self._in_flight_lock:
            return self._in_flight

    def submit(self, requests: list[GenerationRequest]) -> list[GenerationHandle]:
        """`enqueue`, each sample's outputs delivered to a handle on the calling event loop. Only for an engine
        whose outputs go to its own Outbox (the default)."""
        if not isinstance(self._outbox, Outbox):
            raise RuntimeError("this engine's outputs go to another sink than handles")
        handles = self._outbox.open(requests, self.abort)
        self.enqueue(requests)
        return handles

    def enqueue(self, requests: list[GenerationRequest]) -> None:
        """Queues the samples of one prompt (several when n > 1: admitted together, sharing one prefill); their
        outputs go to the engine's output sink under their sample ids."""
        with self._in_flight_lock:
            self._in_flight += len(requests)
        group = requests[0].sample_id if len(requests) > 1 else None
        now = time.monotonic()
        deadline = now + self._request_timeout if self._request_timeout else None
        states = [
            RequestState(
                request=request,
                detokenizer=self._outputs.detokenizer(request.skip_special_tokens),
                group=group,
                submitted_at=now,
                deadline=deadline,
                reservation=reservation(len(request.prompt_ids), request.max_tokens, self.context_length),
            )
            for request in requests
        ]
        self._commands.put(_Add(states))

    def abort(self, sample_id: str) -> None:
        """Ends a sample at the next step; it receives what it has generated so far, finish reason "stop"."""
        self._commands.put(_Abort(sample_id))

    def cancel_all(self, reason: str) -> None:
        """Ends every request at the next step with a retryable `shutting_down` error (after the drain timeout)."""
        self._commands.put(_CancelAll(reason))

    def _check_captured_decode(self, loaded: LoadedModel) -> None:
        """Serves captured only if a few captured steps give what eager ones give; any failure: eager, warned."""
        log.info("decode: capturing the decode step and checking it against eager (%d steps)", CHECK_STEPS)
        config = loaded.model.config
        # Compared at the tolerance of the least precise dtype the forward computes in.
        quantized = loaded.quantization
        precision = (
            loaded.dtype if quantized is None else activation_dtype(quantized.method, loaded.dtype, loaded.device)
        )
        try:
            with torch.inference_mode():
                problem = captured_decode_problem(self._runner, config.vocab_size, precision, self.context_length)
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            log.info("decode: captured (self-check passed)")
            return
        log.warning("captured decode failed its self-check (%s); serving eager decode steps", problem)
        self._runner.use_eager()

    # The engine thread.

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                if self._scheduler.idle:
                    release_free_host_memory(self._device)
                running = self._take_commands(block=self._scheduler.idle)
                self._outbox.flush()  # what the commands ended
                if not running:
                    break
                try:
                    self._step()
                except Exception as error:  # the last resort: each part of the step isolates its own faults
                    log.exception("engine step failed")
                    self._fail(self._scheduler.running, str(error))
                self._outbox.flush()
        for state in self._scheduler.everyone():
            self._end(state, Ending("", "error"), GenerationError("the server is shutting down", True, "shutting_down"))
        self._outbox.flush()

    def _take_commands(self, *, block: bool) -> bool:
        """Applies queued commands; False once shutdown was asked."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            match command:
                case _Add(states):
                    self._scheduler.add(states)
                case _Abort(sample_id):
                    for state in self._scheduler.everyone():
                        if state.sample_id == sample_id:
                            self._end(state, Ending(state.stops.flush(), "stop", cancelled=True))
                case _CancelAll(reason):
                    for state in self._scheduler.everyone():
                        error = GenerationError(reason, retryable=True, code="shutting_down")
                        self._end(state, Ending(state.stops.flush(), "error"), error)
                case _Shutdown():
                    return False
            self._update_stats()

    def _step(self) -> None:
        started = time.perf_counter()
        plan = self._scheduler.schedule()
        for state in plan.expired:
            self._expire(state)
        for group in plan.admitted:
            for state in group:
                state.sampler_slot = self._sampler.add(state.request.prompt_ids, state.request.params)
                self.stats.prompt_tokens += len(state.request.prompt_ids)
        prefill = [work for work in plan.prefill if self._start_prefill(work)]
        decoded, chunks = self._forwards(plan.decode, prefill)
        logits, stepped = [], []
        if decoded is not None:
            logits.append(decoded)
            stepped.extend(plan.decode)
        for work, chunk_logits in chunks:
            first = self._chunk_ran(work, chunk_logits)
            if first is not None:
                logits.extend([first.unsqueeze(0)] * len(work.group))
                stepped.extend(work.group)
        if stepped:
            self._sample_and_advance(logits[0] if len(logits) == 1 else torch.cat(logits), stepped)
        self.stats.steps += 1
        self.stats.step_seconds += time.perf_counter() - started
        self._update_stats()

    def _forwards(
        self, decoding: list[RequestState], prefill: list[PrefillWork]
    ) -> tuple[torch.Tensor | None, list[tuple[PrefillWork, torch.Tensor | None]]]:
        """The step's forwards: the decode logits (None when nothing decodes or the decode failed), and each chunk
        that ran with its logits (None until its prompt is done). One mixed forward where the runner has it and the
        step has two parts or more; run apart when that fails, so that a fault is pinned on the part it is in."""
        if self._runner.mixes and len(prefill) + bool(decoding) > 1:
            started = time.perf_counter()
            try:
                decoded, firsts = self._runner.mixed_step(
                    [(s.sample_id, s.last_token) for s in decoding],
                    [(work.group[0].sample_id, work.tokens) for work in prefill],
                )
                self.stats.mixed_steps += 1
                return decoded, list(zip(prefill, firsts, strict=True))
            except Exception as error:
                log.warning(
                    "a step of %d decode rows and %d prompt chunks failed (%s); running them apart",
                    len(decoding),
                    len(prefill),
                    error,
                )
            finally:
                self.stats.forward_seconds += time.perf_counter() - started
        decoded = self._decode(decoding) if decoding else None
        chunks = []
        for work in prefill:
            ran, chunk_logits = self._prefill_chunk(work)
            if ran:
                chunks.append((work, chunk_logits))
        return decoded, chunks

    def _decode(self, decoding: list[RequestState]) -> torch.Tensor | None:
        """The batched decode forward; None when it failed, after failing the requests at fault (the others retry
        at the next step: the runner has rolled the batch cache back)."""
        started = time.perf_counter()
        try:
            return self._runner.decode([(s.sample_id, s.last_token) for s in decoding])
        except torch.OutOfMemoryError:
            # The longest row holds the most memory: dropping it frees the most.
            longest = max(decoding, key=lambda s: len(s.request.prompt_ids) + len(s.output_ids))
            log.warning("out of memory in a decode step of %d rows; failing the longest", len(decoding))
            self._fail([longest], "out of memory while growing its cache")
            return None
        except Exception as error:  # the model itself failed: no row can be told apart from the others
            log.exception("decode step failed")
            self._fail(decoding, str(error))
            return None
        finally:
            self.stats.forward_seconds += time.perf_counter() - started

    def _start_prefill(self, work: PrefillWork) -> bool:
        """Begins the group's prefill when this is its first chunk; False when that failed (the group has)."""
        if not work.starts:
            return True
        leader = work.group[0]
        try:
            shifted = self._runner.start_prefill(
                leader.sample_id, leader.request.prompt_ids, leader.request.cache_reuse
            )
        except Exception as error:
            self._prefill_failed(work, error)
            return False
        for state in work.group:
            state.shifted_tokens = shifted
        return True

    def _prefill_chunk(self, work: PrefillWork) -> tuple[bool, torch.Tensor | None]:
        """Runs one planned chunk of a group's prompt alone: whether it ran (it failed the group if not), and the
        next-token logits once the prompt is done."""
        started = time.perf_counter()
        try:
            return True, self._runner.prefill_chunk(work.group[0].sample_id, work.tokens)
        except Exception as error:  # this prompt alone: its own cache, its own forward
            self._prefill_failed(work, error)
            return False, None
        finally:
            self.stats.forward_seconds += time.perf_counter() - started

    def _prefill_failed(self, work: PrefillWork, error: Exception) -> None:
        if not isinstance(error, torch.OutOfMemoryError):
            log.exception("prefill of request %s failed", work.group[0].sample_id)
        self._fail(work.group, "out of memory" if isinstance(error, torch.OutOfMemoryError) else str(error))

    def _chunk_ran(self, work: PrefillWork, first: torch.Tensor | None) -> torch.Tensor | None:
        """After a chunk of a group's prompt: the scheduler and the clients learn how far it got. When the prompt
        is done, every sample of the group joins the batch (those after the leader as copies of its row) and the
        next-token logits are returned."""
        leader = work.group[0]
        if first is None:
            remaining = self._runner.prefill_remaining(leader.sample_id)
            self._scheduler.prefilled(work.group, remaining)
            for state in work.group:  # a client can show how far the reading has got
                self._outbox.put(state.sample_id, state.progress(len(state.request.prompt_ids) - remaining))
            return None
        for sibling in work.group[1:]:
            self._runner.fork(leader.sample_id, sibling.sample_id)
        self._scheduler.prefilled(work.group, 0)
        return first

    def _sample_and_advance(self, logits: torch.Tensor, stepped: list[RequestState]) -> None:
        drawn = self._sample(logits, stepped)
        self._outputs.record_logprobs(logits, stepped, [token if isinstance(token, int) else None for token in drawn])
        for state, token in zip(stepped, drawn, strict=True):
            if isinstance(token, SamplingFailed):
                self._fail([state], token.reason)
                continue
            self.stats.generated_tokens += 1
            try:
                outcome = self._outputs.advance(state, token)
            except Exception as error:
                log.exception("request %s: reading its new token failed", state.sample_id)
                self._fail([state], str(error))
                continue
            if isinstance(outcome, Ending):
                self._end(state, outcome)
            elif isinstance(outcome, BackOff):
                self._back_off(state, outcome.banned_at)

    def _sample(self, logits: torch.Tensor, stepped: list[RequestState]) -> list[int | SamplingFailed]:
        """One token per row, or why that row failed: its logits were NaN or infinite, or sampling it raised
        (found by sampling row by row after the batched call raised)."""
        slots = [s.sampler_slot for s in stepped]
        bans = [s.guard.bans_for(len(s.output_ids)) if s.guard else frozenset() for s in stepped]
        started = time.perf_counter()
        drawn: list[int | SamplingFailed | None]
        try:
            drawn = list(self._sampler.sample(logits, slots, bans))
        except Exception:
            log.exception("batched sampling failed; sampling row by row")
            drawn = []
            for i, slot in enumerate(slots):
                try:
                    drawn.extend(self._sampler.sample(logits[i : i + 1], [slot], [bans[i]]))
                except Exception as error:
                    drawn.append(SamplingFailed(f"sampling failed: {error}"))
        self.stats.sampling_seconds += time.perf_counter() - started
        invalid = SamplingFailed("the model produced invalid logits (NaN or infinity) for this request")
        return [invalid if token is None else token for token in drawn]

    def _back_off(self, state: RequestState, banned_at: int) -> None:
        """A banned string appeared: the cache and the sampler's history go back with the output."""
        position = self._outputs.back_off(state, banned_at)
        if position is None:
            self._end(state, Ending("", "stop"))
            return
        history = [*state.request.prompt_ids, *state.output_ids]
        # The cache keeps every position but the last token's, which the next step feeds again.
        self._runner.truncate(state.sample_id, len(history) - 1)
        self._sampler.rewind(state.sampler_slot, history, generated=position)

    def _expire(self, state: RequestState) -> None:
        """`--request-timeout`: a request past its deadline ends with what it has (finish reason "length"); one
        that has generated nothing yet gets a retryable error."""
        log.info("request %s timed out after %.1f s", state.sample_id, time.monotonic() - state.submitted_at)
        self.stats.timed_out_requests += 1
        if state.output_ids:
            self._end(state, Ending(state.stops.flush(), "length"))
        else:
            message = f"The request timed out after {self._request_timeout:g} s before generating anything."
            self._end(state, Ending("", "error"), GenerationError(message, retryable=True, code="request_timeout"))

    def _fail(self, states: list[RequestState], reason: str) -> None:
        for state in list(states):
            log.error("request %s failed: %s", state.sample_id, reason)
            self.stats.failed_requests += 1
            self._end(state, Ending("", "error"), GenerationError(f"generation failed: {reason}"))
        if self._device.type == "cuda":
            # Most likely out of memory: hand the freed blocks back so that the next step can use them.
            torch.cuda.empty_cache()

    def _end(self, state: RequestState, ending: Ending, error: GenerationError | None = None) -> None:
        """Delivers a request's last output and frees what it held; its cache goes to the prefix cache unless it
        failed."""
        self._outputs.finish(state, ending, error)
        # The cache holds the prompt and every generated token but the last (sampled, never fed).
        held = [*state.request.prompt_ids, *state.output_ids][:-1] if state.output_ids else None
        self._runner.release(state.sample_id, held if ending.reason != "error" else None)
        if state.sampler_slot >= 0:
            self._sampler.remove(state.sampler_slot)
        self._scheduler.finished(state)
        with self._in_flight_lock:
            self._in_flight -= 1
        self.stats.finished_requests += 1

    def _update_stats(self) -> None:
        self.stats.running = len(self._scheduler.running)
        self.stats.waiting = len(self._scheduler.waiting)
        self.stats.running_caches = self._runner.running_caches
        self.stats.prefilled_tokens = self._runner.prefilled_tokens
        self.stats.reused_tokens = self._runner.reused_tokens
        self.stats.shifted_tokens = self._runner.shifted_tokens
        self.stats.prefix_cache_entries = len(self._runner.prefix_cache)
        self.stats.prefix_cache_tokens = self._runner.prefix_cache.tokens
        self.stats.batch_cache_tokens = self._runner.batch_tokens
