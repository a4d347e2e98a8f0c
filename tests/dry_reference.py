"""DRY written straight from its definition: slow, plain Python, independent of the fast path.

It is the executable statement of the contract: the tests check the batched implementation against it on
random histories, and `bench/sampling.py` measures what the fast path saves over it.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sampling import SamplingParams
from sampling.breakers import Tokenize
from sampling.sampler import Sampler

FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class ReferenceBreakers:
    single: set[int]  # tokens whose text contains a breaker
    split: list[tuple[set[int], list[int]]]  # (heads, tail) for breakers written across tokens


def reference_breakers(
    sequence_breakers: Sequence[str], vocab: Sequence[str], tokenize: Callable[[str], list[int]]
) -> ReferenceBreakers:
    single = {t for t, text in enumerate(vocab) if any(b in text for b in sequence_breakers)}
    split = []
    for b in sequence_breakers:
        for k in range(1, len(b)):
            heads = {t for t, text in enumerate(vocab) if text and b not in text and text.endswith(b[:k])}
            split.append((heads, tokenize(b[k:])))
    return ReferenceBreakers(single=single, split=split)


def reference_dry_with(
    history: Sequence[int],
    breakers: ReferenceBreakers,
    *,
    multiplier: float,
    base: float,
    allowed_length: int,
    penalty_last_n: int,
) -> dict[int, float]:
    if multiplier == 0:
        return {}
    h = list(history[-penalty_last_n:]) if penalty_last_n > 0 else list(history)
    n = len(h)
    ends = []
    for end in range(n):
        if h[end] in breakers.single:
            ends.append(end)
        for heads, tail in breakers.split:
            head = end - len(tail)
            if head >= 0 and h[head + 1 : end + 1] == tail and h[head] in heads:
                ends.append(end)
    rep_limit = n - 1 - max(ends) if ends else n
    if rep_limit < allowed_length:
        return {}
    longest: dict[int, int] = {}
    for i in range(n - 1):
        k = 0
        while k <= i and h[i - k] == h[n - 1 - k]:
            k += 1
        follower = h[i + 1]
        if follower not in breakers.single:
            longest[follower] = max(longest.get(follower, 0), min(k, rep_limit))
    max_exponent = math.inf if base == 1 else math.log(FLOAT32_MAX / multiplier) / math.log(base) - 1
    return {
        token: multiplier * base ** min(length - allowed_length, max_exponent)
        for token, length in longest.items()
        if length >= allowed_length
    }


def reference_dry(
    history: Sequence[int],
    *,
    vocab: Sequence[str],
    tokenize: Callable[[str], list[int]],
    multiplier: float,
    base: float,
    allowed_length: int,
    sequence_breakers: Sequence[str],
    penalty_last_n: int,
) -> dict[int, float]:
    return reference_dry_with(
        history,
        reference_breakers(sequence_breakers, vocab, tokenize),
        multiplier=multiplier,
        base=base,
        allowed_length=allowed_length,
        penalty_last_n=penalty_last_n,
    )


def dry_penalties(
    history: Sequence[int],
    *,
    vocab: Sequence[str],
    tokenize: Tokenize,
    multiplier: float,
    base: float,
    allowed_length: int,
    sequence_breakers: Sequence[str],
    penalty_last_n: int,
) -> dict[int, float]:
    """The amount subtracted from each token id's logit after `history`, through the production path (the
    sampler's own state and batched penalty, for a batch of one)."""
    params = SamplingParams(
        dry_multiplier=multiplier,
        dry_base=base,
        dry_allowed_length=allowed_length,
        dry_sequence_breakers=tuple(sequence_breakers),
        dry_penalty_last_n=penalty_last_n,
    )
    sampler = Sampler(slots=1, capacity=max(len(history), 1), vocab=vocab, tokenize=tokenize)
    slot = sampler.add(history, params)
    penalty = sampler.dry_penalties([slot])
    if penalty is None:
        return {}
    (ids,) = penalty[0].nonzero(as_tuple=True)
    return {int(i): float(penalty[0, i]) for i in ids}
