"""DRY sequence breakers, analysed over the vocabulary once per distinct breaker list.

A token whose text contains a breaker string is a single-token breaker. A breaker written across several tokens
is recognised as a head (a token whose text ends with a proper prefix of the breaker) followed by the tail (the
canonical tokenisation of the rest of the breaker). This is llama.cpp's definition.
"""

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class BreakerAnalysis:
    single: frozenset[int]
    heads_by_tail: dict[tuple[int, ...], frozenset[int]]

    @property
    def longest_tail(self) -> int:
        return max(map(len, self.heads_by_tail), default=0)

    def occurrence_ending_at(self, history: Sequence[int], end: int) -> int | None:
        """The position of the head (or the single breaker) of a breaker occurrence whose last token is
        `history[end]`, if there is one; the latest-starting one when several end there."""
        if history[end] in self.single:
            return end
        for tail, heads in self.heads_by_tail.items():
            head = end - len(tail)
            if head >= 0 and tuple(history[head + 1 : end + 1]) == tail and history[head] in heads:
                return head
        return None


def analyse_breakers(breakers: Sequence[str], vocab: Sequence[str], tokenize: Tokenize) -> BreakerAnalysis:
    single: set[int] = set()
    heads: defaultdict[tuple[int, ...], set[int]] = defaultdict(set)
    by_last_char: defaultdict[str, list[int]] = defaultdict(list)
    for token_id, text in enumerate(vocab):
        if text:
            by_last_char[text[-1]].append(token_id)
    for breaker in breakers:
        containing = {token_id for token_id, text in enumerate(vocab) if text and breaker in text}
        single.update(containing)
        for split in range(1, len(breaker)):
            prefix, tail = breaker[:split], tuple(tokenize(breaker[split:]))
            for token_id in by_last_char.get(prefix[-1], ()):
                if token_id not in containing and vocab[token_id].endswith(prefix):
                    heads[tail].add(token_id)
    return BreakerAnalysis(
        single=frozenset(single), heads_by_tail={tail: frozenset(ids) for tail, ids in heads.items()}
    )


class BreakerCache:
    """One vocabulary's analyses, by breaker list: clients resend the same list with every request."""

    def __init__(self, vocab: Sequence[str], tokenize: Tokenize, capacity: int = 32) -> None:
        self.vocab = vocab
        self.tokenize = tokenize
        self._capacity = capacity
        self._analyses: dict[tuple[str, ...], BreakerAnalysis] = {}

    def get(self, breakers: Sequence[str]) -> BreakerAnalysis:
        key = tuple(sorted(set(breakers)))
        analysis = self._analyses.pop(key, None) or analyse_breakers(key, self.vocab, self.tokenize)
        self._analyses[key] = analysis  # most recently used last
        while len(self._analyses) > self._capacity:
            del self._analyses[next(iter(self._analyses))]
        return analysis


_SHARED_CACHES: dict[tuple[int, int], BreakerCache] = {}
_SHARED_CACHES_KEPT = 8


def shared_breaker_cache(vocab: Sequence[str], tokenize: Tokenize) -> BreakerCache:
    """The one cache for this vocabulary and tokenizer, so every sampler built on them (the engine's, and the
    one-sequence helpers) analyses a breaker list once."""
    key = (id(vocab), id(tokenize))
    cache = _SHARED_CACHES.get(key)
    # The cache holds both objects, so their ids cannot be reused by others while it is kept.
    if cache is None:
        cache = _SHARED_CACHES[key] = BreakerCache(vocab, tokenize)
        while len(_SHARED_CACHES) > _SHARED_CACHES_KEPT:
            del _SHARED_CACHES[next(iter(_SHARED_CACHES))]
    return cache
