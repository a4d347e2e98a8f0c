"""KV caches of finished sequences, kept so a new prompt that starts the same way skips that part of prefill.

Roleplay clients resend the whole chat every turn and regenerate ("swipe") the same prompt: a follow-up turn
then prefills only its new tokens, a swipe only its last one. Entries are keyed by the token ids their cache
holds, bounded by a token budget (derived from a memory budget), least recently used out first.

Cache reuse (`--cache-reuse N`, llama.cpp's algorithm): once a chat is longer than the context, the client drops
its oldest messages after the story string, and the prompt differs from the cached one right there. After the
shared start, runs of at least N tokens of the prompt that the cached entry holds later on are reused where they
now stand, their keys turned to the new positions (rope_shift.py). Those keys were computed with the dropped
messages still before them: an approximation, which bench/drift.py measures.
"""

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache

from server.engine.kv.kv_format import layer_tensors


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    # Compare in blocks first: whole-block equality is one C-level comparison.
    length = 0
    block = 256
    while length + block <= limit and a[length : length + block] == b[length : length + block]:
        length += block
    while length < limit and a[length] == b[length]:
        length += 1
    return length


class MovedRun(NamedTuple):
    """Tokens the cached entry holds at `cached`, which the prompt has at `prompt`."""

    cached: int
    prompt: int
    length: int


def moved_runs(cached: Sequence[int], prompt: Sequence[int], start: int, min_length: int) -> list[MovedRun]:
    """After the first `start` shared tokens: the runs of at least `min_length` tokens that continue the prompt
    from where the previous one ended, found in order further on in `cached` (the prompt's last token is never
    in one: its logits start generation)."""
    runs = []
    at_cached, at_prompt, end = start, start, len(prompt) - 1
    while at_cached < len(cached) and at_prompt < end:
        length = 0
        while (
            at_cached + length < len(cached)
            and at_prompt + length < end
            and cached[at_cached + length] == prompt[at_prompt + length]
        ):
            length += 1
        if length >= min_length:
            runs.append(MovedRun(at_cached, at_prompt, length))
            at_cached, at_prompt = at_cached + length, at_prompt + length
        else:
            at_cached += 1
    return runs


class PrefixCache:
    def __init__(
        self, budget_tokens: int, shift_keys: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    ) -> None:
        """`shift_keys(keys, d)`: keys computed at their positions, as they are d positions later (cache reuse
        needs it)."""
        self.budget_tokens = budget_tokens
        self._shift_keys = shift_keys
        self._entries: OrderedDict[tuple[int, ...], DynamicCache] = OrderedDict()

    @property
    def tokens(self) -> int:
        return sum(map(len, self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, token_ids: tuple[int, ...], cache: DynamicCache) -> None:
        """Keeps `cache` (which holds exactly `token_ids`), unless a kept entry already covers it."""
        if not token_ids or len(token_ids) > self.budget_tokens:
            return
        for key in list(self._entries):
            shared = common_prefix(key, token_ids)
            if shared == len(token_ids):
                self._entries.move_to_end(key)
                return  # an entry holds all of this and more
            if shared == len(key):
                del self._entries[key]  # this one supersedes it
        self._entries[token_ids] = cache
        self.evict_to(self.budget_tokens)

    def evict_to(self, tokens: int) -> None:
        """Drops the least recently used entries until at most `tokens` are kept (running requests need room)."""
        while self._entries and self.tokens > tokens:
            self._entries.popitem(last=False)

    def reusable(self, prompt_ids: Sequence[int], min_run: int = 0) -> int:
        """How many of the prompt's first tokens `take` would give a cache for."""
        _, shared, runs = self._best(prompt_ids, min_run)
        return shared + sum(run.length for run in runs)

    def take(self, prompt_ids: Sequence[int], min_run: int = 0) -> tuple[DynamicCache | None, int, int]:
        """A private cache for the first tokens of `prompt_ids`, from the entry that gives the most of them: its
        shared start, cropped to it, and with `min_run` > 0 its moved runs after it (`moved_runs`), shifted into
        place. Returns the cache, the shared
        prefix's length and how many moved tokens follow it. At least the prompt's last token is left to prefill:
        its logits start generation."""
        best_key, best, runs = self._best(prompt_ids, min_run)
        if best_key is None:
            return None, 0, 0
        self._entries.move_to_end(best_key)
        if runs:
            return self._moved(self._entries[best_key], best, runs), best, sum(run.length for run in runs)
        cache = copy.deepcopy(self._entries[best_key])
        surplus = cache.get_seq_length() - best
        if surplus > 0:
            cache.crop(-surplus)  # transformers 5 takes the number of positions to drop, negated
        return cache, best, 0

    def _moved(self, entry: DynamicCache, shared: int, runs: list[MovedRun]) -> DynamicCache:
        """A new cache: `entry`'s first `shared` positions, then each run's keys shifted to its new place and its
        values as they are."""
        assert self._shift_keys is not None
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(zip(*layer_tensors(entry), strict=True)):
            parts = [(keys[:, :, :shared], values[:, :, :shared])]
            for run in runs:
                moved = slice(run.cached, run.cached + run.length)
                parts.append((self._shift_keys(keys[:, :, moved], run.prompt - run.cached), values[:, :, moved]))
            cache.update(torch.cat([k for k, _ in parts], dim=2), torch.cat([v for _, v in parts], dim=2), layer)
        return cache

    def _best(self, prompt_ids: Sequence[int], min_run: int) -> tuple[tuple[int, ...] | None, int, list[MovedRun]]:
        """The entry that gives the prompt the most tokens: the first tokens it shares (never the last) and, with
        `min_run` > 0 and keys that can be moved, its moved runs after them."""
        best: tuple[tuple[int, ...] | None, int, list[MovedRun]] = (None, 0, [])
        most = 0
        for key in self._entries:
            shared = min(common_prefix(key, prompt_ids), len(prompt_ids) - 1)
            if shared <= 0:
                continue
            runs = moved_runs(key, prompt_ids, shared, min_run) if min_run and self._shift_keys else []
            given = shared + sum(run.length for run in runs)
            if given > most:
                best, most = (key, shared, runs), given
        return best
