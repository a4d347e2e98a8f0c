"""Runs the model forward passes: prefill of a prompt and one decode step for many sequences.

Each sequence owns a KV cache. The decode interface takes all running sequences at once so a batched forward
can replace the per-sequence loop without changing the caller.
"""

import copy
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from server.engine.prefix_cache import PrefixCache


class ModelRunner:
    def __init__(self, model: PreTrainedModel, device: torch.device, prefix_budget_tokens: int) -> None:
        self._model = model
        self._device = device
        self._caches: dict[str, DynamicCache] = {}
        self._prefixes = PrefixCache(prefix_budget_tokens)
        self.prefilled_tokens = 0
        self.reused_tokens = 0

    @property
    def prefix_cache(self) -> PrefixCache:
        return self._prefixes

    @property
    def cached_sequences(self) -> int:
        return len(self._caches)

    def prefill(self, sequence_id: str, token_ids: Sequence[int]) -> torch.Tensor:
        """Runs the prompt (only the part past the longest cached prefix), keeps its KV cache, and returns the
        next-token logits (vocab,)."""
        cache, reused = self._prefixes.take(token_ids)
        cache = cache or DynamicCache(config=self._model.config)
        self._caches[sequence_id] = cache
        self.prefilled_tokens += len(token_ids) - reused
        self.reused_tokens += reused
        return self._forward(token_ids[reused:], cache)[0]

    def decode(self, steps: Sequence[tuple[str, int]]) -> torch.Tensor:
        """Feeds each (sequence id, last token) pair and returns their next-token logits, one row each."""
        return torch.cat([self._forward([token], self._caches[sequence_id]) for sequence_id, token in steps])

    def fork(self, source_id: str, sequence_id: str) -> None:
        """A second sample of the same prompt starts from a copy of the prompt's KV cache: no second prefill."""
        self._caches[sequence_id] = copy.deepcopy(self._caches[source_id])

    def crop(self, sequence_id: str, length: int) -> None:
        """Keeps the first `length` positions of a sequence's KV cache (backing off a banned string)."""
        cache = self._caches[sequence_id]
        surplus = cache.get_seq_length() - length
        if surplus > 0:
            cache.crop(-surplus)  # transformers 5 takes the number of positions to drop, negated

    def release(self, sequence_id: str, token_ids: Sequence[int] | None = None) -> None:
        """Frees a sequence's cache, keeping it for later prompts when `token_ids` (what it holds) are given."""
        cache = self._caches.pop(sequence_id, None)
        if cache is not None and token_ids is not None and cache.get_seq_length() == len(token_ids):
            self._prefixes.put(tuple(token_ids), cache)

    def _forward(self, token_ids: Sequence[int], cache: DynamicCache) -> torch.Tensor:
        input_ids = torch.tensor([list(token_ids)], device=self._device)
        output = self._model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        return output.logits[:, -1, :]
