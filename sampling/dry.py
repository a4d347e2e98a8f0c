"""DRY ("don't repeat yourself"), batched over requests, with text-level sequence breakers.

For a history h of length N (limited to the last `penalty_last_n` tokens when that is > 0):
- rep_limit is the number of tokens after the last breaker occurrence (all of h if none); below
  `allowed_length`, nothing is penalised;
- for every earlier position i, L(i) = min(longest common suffix of h[..i] and h, rep_limit); the follower
  h[i+1] is a candidate with n = the largest L(i) over its occurrences;
- every candidate with n >= allowed_length that is not a single-token breaker loses
  multiplier * base ** (n - allowed_length) from its logit (exponent clamped to keep it finite in float32).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sampling.breakers import BreakerAnalysis
from sampling.history import TokenHistories

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class DryRow:
    """One row's DRY settings and where its history stands."""

    row: int
    multiplier: float
    base: float
    allowed_length: int
    window_start: int
    rep_limit: int

    @property
    def max_exponent(self) -> float:
        if self.base == 1:
            return math.inf
        return math.log(_FLOAT32_MAX / self.multiplier) / math.log(self.base) - 1


def rep_limit(length: int, window_start: int, occurrences: Sequence[tuple[int, int]]) -> int:
    """Tokens after the last breaker occurrence (head, end) lying wholly inside the window."""
    ends = [end for head, end in occurrences if head >= window_start]
    return length - 1 - max(ends) if ends else length - window_start


def dry_penalty_matrix(histories: TokenHistories, rows: Sequence[DryRow], vocab_size: int) -> torch.Tensor:
    """The amount to subtract from each row's logits, (len(rows), vocab_size), in float32."""
    device = histories.device
    # Every row's numbers reach the device in two tensors (each one a copy on a GPU).
    index, last_followers, starts, limits, allowed = torch.tensor(
        [[r.row, histories.lengths[r.row] - 1, r.window_start, r.rep_limit, r.allowed_length] for r in rows],
        device=device,
    ).T.unsqueeze(2)
    index = index.squeeze(1)
    max_exponents, multipliers, bases = torch.tensor(
        [[r.max_exponent, r.multiplier, r.base] for r in rows], dtype=torch.float32, device=device
    ).T.unsqueeze(2)
    width = max(histories.lengths[r.row] for r in rows)

    positions = histories.columns[: max(width - 1, 0)]
    followers = histories.tokens.index_select(0, index)[:, 1:width]
    counted = (positions >= starts) & (positions < last_followers)
    counted &= ~histories.is_breaker.index_select(0, index)[:, 1:width]
    match = histories.match.index_select(0, index)[:, : width - 1]
    # positions + 1 - starts: how far back from each position the window reaches.
    match = torch.minimum(torch.minimum(match, limits), histories.columns[1:width] - starts)
    match = torch.where(counted & (limits >= allowed), match, 0)

    # The penalty grows with the match length, so the largest penalty of a candidate's occurrences is the
    # penalty of its longest match: compute per position, then keep the maximum per token. This keeps the
    # vocabulary-wide work to one scatter.
    exponent = torch.minimum((match - allowed).to(torch.float32), max_exponents)
    penalty = multipliers * bases**exponent
    penalty = torch.where(match >= allowed, penalty, 0.0)
    matrix = torch.zeros(len(rows), vocab_size, dtype=torch.float32, device=device)
    return matrix.scatter_reduce_(1, followers, penalty, reduce="amax")


def breaker_flags(history: Sequence[int], analysis: BreakerAnalysis | None) -> list[bool]:
    """Which positions hold a single-token breaker (never a DRY candidate)."""
    single = analysis.single if analysis else frozenset()
    return [token in single for token in history]
