"""KV caches of finished sequences, kept so a new prompt that starts the same way skips that part of prefill.

Roleplay clients resend the whole chat every turn and regenerate ("swipe") the same prompt: a follow-up turn
then prefills only its new tokens, a swipe only its last one. Entries are keyed by the token ids their cache
holds, bounded by a token budget (derived from a memory budget), least recently used out first.
"""

import copy
from collections import OrderedDict
from collections.abc import Sequence

from transformers import DynamicCache


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


class PrefixCache:
    def __init__(self, budget_tokens: int) -> None:
        self.budget_tokens = budget_tokens
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

    def reusable(self, prompt_ids: Sequence[int]) -> int:
        """How many of the prompt's first tokens `take` would give a cache for."""
        return self._longest(prompt_ids)[1]

    def take(self, prompt_ids: Sequence[int]) -> tuple[DynamicCache | None, int]:
        """A private copy of the cache of the longest kept prefix of `prompt_ids`, cropped to it, and its length.
        At least the prompt's last token is left to prefill: its logits start generation."""
        best_key, best = self._longest(prompt_ids)
        if best_key is None:
            return None, 0
        self._entries.move_to_end(best_key)
        cache = copy.deepcopy(self._entries[best_key])
        surplus = cache.get_seq_length() - best
        if surplus > 0:
            cache.crop(-surplus)  # transformers 5 takes the number of positions to drop, negated
        return cache, best

    def _longest(self, prompt_ids: Sequence[int]) -> tuple[tuple[int, ...] | None, int]:
        """The entry sharing the most first tokens with the prompt, and how many it gives (never the last)."""
        best_key, best = None, 0
        for key in self._entries:
            length = common_prefix(key, prompt_ids)
            if length > best:
                best_key, best = key, length
        best = min(best, len(prompt_ids) - 1)
        return (best_key, best) if best > 0 else (None, 0)
