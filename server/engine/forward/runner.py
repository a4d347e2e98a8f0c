"""Runs the model forward passes: prefill of a prompt, then one batched decode step for every running sequence.

A prompt is prefilled on its own cache (starting from the longest cached prefix), in chunks so that a long prompt
does not stall the running streams, then joins the bucketed batch cache; each decode step is one forward over all
rows, eager or captured (one CUDA graph per padded batch shape: server/engine/forward/decode_graphs.py).
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from server.engine.forward.decode_graphs import CaptureFailed, DecodeGraphs
from server.engine.forward.decode_step import DecodeStep
from server.engine.forward.mixed_step import MixedStep, PromptChunk
from server.engine.forward.serving_model import prepare_for_serving
from server.engine.kv.bucket_cache import BucketCache
from server.engine.kv.kv_format import KvFormat
from server.engine.kv.prefix_cache import PrefixCache
from server.engine.kv.rope_shift import rope_frequencies, shifted_keys
from server.engine.kv.step_layout import DecodeBatch
from server.engine.options import default_cache_dir

log = logging.getLogger(__name__)

_DEFAULT_KERNEL_CACHE = default_cache_dir()  # where the server keeps its compiled CPU kernels by default


@dataclass
class _Prefill:
    """A prompt being prefilled chunk by chunk on its own cache, before it joins the batch."""

    cache: DynamicCache
    token_ids: Sequence[int]
    done: int


class ModelRunner:
    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        prefix_budget_tokens: int,
        *,
        context_length: int | None = None,
        captured: bool = False,
        packed_weights: bool = True,
        kv_cache_dtype: str = "auto",
        kernel_cache: Path | None = _DEFAULT_KERNEL_CACHE,
    ) -> None:
        """`captured`: decode steps run as captured graphs of padded batches (on the CPU: the same padded step,
        uncaptured); `use_eager` turns that off. `packed_weights`, `kernel_cache` (None: without the CPU kernels):
        see serving_model.prepare_for_serving. `kv_cache_dtype`: how the KV cache stores keys and values
        (kv/kv_format.py)."""
        self.model = model  # read by the test servers that inject faults into its forward
        self._device = device
        prepare_for_serving(model, device, packed_weights=packed_weights, kernel_cache=kernel_cache)
        context_length = context_length or model.config.max_position_embeddings
        self._format = KvFormat(kv_cache_dtype, model.dtype)
        self._batch = BucketCache(model.config, device, self._format, context_length)
        self._step = DecodeStep(model, device)
        self._graphs = DecodeGraphs(self._step, device) if captured else None
        mixes = MixedStep.supports(model) and not self._format.quantized
        self._mixed = MixedStep(model) if mixes else None
        if self.mixes:
            log.info("CPU forward: each step runs its decode rows and prompt chunks as one forward")
        self._pending: dict[str, _Prefill] = {}
        self._prefixes = PrefixCache(prefix_budget_tokens, self._key_shifter(model, self._format))
        self.prefilled_tokens = 0
        self.reused_tokens = 0  # prompt tokens whose cache was the prefix cache's, in place
        self.shifted_tokens = 0  # prompt tokens whose cache the prefix cache held elsewhere (cache reuse)

    @staticmethod
    def _key_shifter(model: PreTrainedModel, kv_format: KvFormat) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
        """How stored keys move to other positions (cache reuse); None for a model without RoPE."""
        frequencies = rope_frequencies(model)
        if frequencies is None:
            return None
        return lambda keys, shift: kv_format.encode(shifted_keys(kv_format.decode(keys), shift, frequencies))

    @property
    def decode_mode(self) -> str:
        return "eager" if self._graphs is None else "captured"

    def use_eager(self) -> None:
        self._graphs = None

    @property
    def mixes(self) -> bool:
        """Whether `mixed_step` runs: decode steps run eager (the CPU's way), on the CPU kernels, over a cache
        that stores keys and values as computed."""
        return self._mixed is not None and self._graphs is None

    @property
    def prefix_cache(self) -> PrefixCache:
        return self._prefixes

    @property
    def running_caches(self) -> int:
        """KV caches held for sequences in the batch or being prefilled (the prefix cache's are not counted)."""
        return len(self._batch) + len(self._pending)

    def footprint(self, reservations: list[int]) -> int:
        """KV positions the batch cache holds at most for running requests of these reservations."""
        return self._batch.footprint(reservations)

    @property
    def batch_tokens(self) -> int:
        """KV positions allocated for the running rows, padding and holes included."""
        return self._batch.allocated_tokens

    def start_prefill(self, sample_id: str, token_ids: Sequence[int], cache_reuse: int = 0) -> int:
        """Begins a prompt from the longest cached prefix (and, with `cache_reuse` > 0, the cached runs of at least
        that many tokens after it, moved into place); `prefill_chunk` runs the rest. Returns how many were
        moved."""
        stored, reused, shifted = self._prefixes.take(token_ids, cache_reuse)
        config = self.model.config
        start = self._format.new_cache(config) if stored is None else self._format.decoded_cache(stored, config)
        self._pending[sample_id] = _Prefill(start, token_ids, reused + shifted)
        self.reused_tokens += reused
        self.shifted_tokens += shifted
        return shifted

    def prefill_remaining(self, sample_id: str) -> int:
        pending = self._pending[sample_id]
        return len(pending.token_ids) - pending.done

    def prefill_chunk(self, sample_id: str, budget: int) -> torch.Tensor | None:
        """Runs up to `budget` more prompt tokens. When the prompt is done, the sequence joins the batch and its
        next-token logits (vocab,) are returned; before that, None. Where the runner `mixes`, a mixed step of this
        chunk alone (its attention on the chunk kernel, no mask)."""
        if self.mixes:
            return self._mixed_step([], [(sample_id, budget)])[1][0]
        pending = self._pending[sample_id]
        chunk = pending.token_ids[pending.done : pending.done + budget]
        input_ids = torch.tensor([list(chunk)], device=self._device)
        logits = self.model(input_ids=input_ids, cache=pending.cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        return self._chunk_ran(sample_id, len(chunk), logits)

    def _chunk_ran(self, sample_id: str, tokens: int, logits: torch.Tensor | None) -> torch.Tensor | None:
        """Counts a chunk of a prompt as run; the logits once the prompt is done, when it joins the batch."""
        pending = self._pending[sample_id]
        pending.done += tokens
        self.prefilled_tokens += tokens
        if pending.done < len(pending.token_ids):
            return None
        del self._pending[sample_id]
        self._batch.join(sample_id, pending.cache)
        return logits

    def mixed_step(
        self, steps: Sequence[tuple[str, int]], chunks: Sequence[tuple[str, int]]
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """`decode(steps)` (when `steps` is not empty) and `prefill_chunk(sample_id, budget)` of each of `chunks`
        (at least one) in one forward (mixed_step.py; only where `mixes`): the decode logits, and each chunk's as
        `prefill_chunk` returns them. If it raises, every cache is as it was before (running the parts apart then
        tells which one is at fault)."""
        return self._mixed_step(steps, chunks)

    def _mixed_step(
        self, steps: Sequence[tuple[str, int]], chunks: Sequence[tuple[str, int]]
    ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        if self._mixed is None:
            raise RuntimeError("this model runs no mixed steps")
        if steps and {sample_id for sample_id, _ in steps} != set(self._batch.rows):
            raise RuntimeError("a decode step must advance every sequence in the batch")
        parts = []
        for sample_id, budget in chunks:
            pending = self._pending[sample_id]
            tokens = pending.token_ids[pending.done : pending.done + budget]
            ends = pending.done + len(tokens) == len(pending.token_ids)
            parts.append(PromptChunk(tokens, pending.done, pending.cache, ends))
        checkpoint = self._batch.checkpoint()
        try:
            batch = self._batch.advance(dict(steps), padded=False) if steps else None
            logits = self._mixed(parts, batch)
        except BaseException:
            self._batch.restore(checkpoint)
            for part in parts:
                _crop(part.cache, part.start)
            raise
        ending = iter(logits[: sum(part.ends_prompt for part in parts)])
        firsts = [
            self._chunk_ran(sample_id, len(part.tokens), next(ending) if part.ends_prompt else None)
            for (sample_id, _), part in zip(chunks, parts, strict=True)
        ]
        if batch is None:
            return None, firsts
        decoded = logits[len(logits) - len(steps) :]
        index = torch.tensor([batch.row_of[sample_id] for sample_id, _ in steps], device=self._device)
        return decoded.index_select(0, index), firsts

    def decode(self, steps: Sequence[tuple[str, int]]) -> torch.Tensor:
        """One forward for every sequence in the batch, each fed its last token; logits in the order of `steps`
        (which must name every running sequence)."""
        try:
            return self._decode(steps, captured=self._graphs is not None)
        except CaptureFailed as failure:
            log.warning("%s; decode steps run eager from now on", failure)
            self.use_eager()
            return self._decode(steps, captured=False)

    def compare_decode(self, steps: Sequence[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The same decode step eager and captured, from the same cache: (eager, captured logits); the step
        counts once. Raises CaptureFailed."""
        checkpoint = self._batch.checkpoint()
        eager = self._decode(steps, captured=False)
        self._batch.restore(checkpoint)
        return eager, self._decode(steps, captured=True)

    def _decode(self, steps: Sequence[tuple[str, int]], *, captured: bool) -> torch.Tensor:
        tokens = dict(steps)
        if set(tokens) != set(self._batch.rows):
            raise RuntimeError("a decode step must advance every sequence in the batch")
        checkpoint = self._batch.checkpoint()
        try:
            batch, logits = self._forward(tokens, captured=captured)
        except BaseException:
            self._batch.restore(checkpoint)  # so that the rows that are not at fault can go on
            raise
        index = torch.tensor([batch.row_of[sample_id] for sample_id, _ in steps], device=self._device)
        return logits.index_select(0, index)

    def _forward(self, tokens: dict[str, int], *, captured: bool) -> tuple[DecodeBatch, torch.Tensor]:
        batch = self._batch.advance(tokens, padded=captured)
        if captured and self._graphs is not None:
            return batch, self._graphs.run(batch)
        return batch, self._step(batch, batch.inputs.to(self._device))

    def fork(self, source_id: str, sample_id: str) -> None:
        """A second sample of the same prompt starts from a copy of the prompt's row: no second prefill."""
        self._batch.duplicate(source_id, sample_id)

    def truncate(self, sample_id: str, length: int) -> None:
        """Keeps the first `length` positions of a sample's row (backing off a banned string)."""
        self._batch.truncate(sample_id, length)

    def release(self, sample_id: str, token_ids: Sequence[int] | None = None) -> None:
        """Frees a sequence's rows, keeping its cache for later prompts when `token_ids` (what it holds) are given."""
        self._pending.pop(sample_id, None)
        if sample_id not in self._batch.rows:
            return
        keep = token_ids is not None and self._prefixes.budget_tokens > 0
        if token_ids is not None and keep and self._batch.real_length(sample_id) == len(token_ids):
            self._prefixes.put(tuple(token_ids), self._batch.extract(sample_id))
        self._batch.remove(sample_id)


def _crop(cache: DynamicCache, length: int) -> None:
    """Back to `length` positions in every layer, after a forward that failed part-way through the layers."""
    for layer in cache.layers:
        if isinstance(layer, DynamicLayer) and (excess := layer.get_seq_length() - length) > 0:
            layer.crop(-excess)
