"""Runs the model forward passes: prefill of a prompt, then one batched decode step for every running sequence.

A prompt is prefilled on its own cache (starting from the longest cached prefix), then joins the shared batch
cache; each decode step is one forward over all rows.
"""

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from server.engine.batch_cache import BatchCache, order_of
from server.engine.prefix_cache import PrefixCache


class ModelRunner:
    def __init__(self, model: PreTrainedModel, device: torch.device, prefix_budget_tokens: int) -> None:
        self._model = model
        self._device = device
        self._batch = BatchCache(model.config, device)
        self._prefixes = PrefixCache(prefix_budget_tokens)
        self.prefilled_tokens = 0
        self.reused_tokens = 0

    @property
    def prefix_cache(self) -> PrefixCache:
        return self._prefixes

    @property
    def cached_sequences(self) -> int:
        return len(self._batch)

    def prefill(self, sequence_id: str, token_ids: Sequence[int]) -> torch.Tensor:
        """Runs the prompt (only the part past the longest cached prefix), adds the sequence to the batch, and
        returns its next-token logits (vocab,)."""
        cache, reused = self._prefixes.take(token_ids)
        cache = cache or DynamicCache(config=self._model.config)
        self.prefilled_tokens += len(token_ids) - reused
        self.reused_tokens += reused
        input_ids = torch.tensor([list(token_ids[reused:])], device=self._device)
        logits = self._model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        self._batch.join(sequence_id, cache)
        return logits

    def decode(self, steps: Sequence[tuple[str, int]]) -> torch.Tensor:
        """One forward for every sequence in the batch, each fed its last token; logits in the order of `steps`
        (which must name every running sequence)."""
        tokens = dict(steps)
        if set(tokens) != set(self._batch.rows):
            raise RuntimeError("a decode step must advance every sequence in the batch")
        output = self._model(**self._batch.step_inputs(tokens), use_cache=True, logits_to_keep=1)
        index = torch.tensor(order_of(self._batch.rows, [sequence_id for sequence_id, _ in steps]), device=self._device)
        return output.logits[:, -1].index_select(0, index)

    def fork(self, source_id: str, sequence_id: str) -> None:
        """A second sample of the same prompt starts from a copy of the prompt's row: no second prefill."""
        self._batch.duplicate(source_id, sequence_id)

    def crop(self, sequence_id: str, length: int) -> None:
        """Keeps the first `length` positions of a sequence (backing off a banned string)."""
        self._batch.forget_last(sequence_id, self._batch.real_length(sequence_id) - length)

    def release(self, sequence_id: str, token_ids: Sequence[int] | None = None) -> None:
        """Frees a sequence's rows, keeping its cache for later prompts when `token_ids` (what it holds) are given."""
        if sequence_id not in self._batch.rows:
            return
        keep = token_ids is not None and self._prefixes.budget_tokens > 0
        if keep and self._batch.real_length(sequence_id) == len(token_ids):
            self._prefixes.put(tuple(token_ids), self._batch.extract(sequence_id))
        self._batch.remove(sequence_id)
