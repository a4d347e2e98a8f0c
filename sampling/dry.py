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
    index = torch.tensor([r.row for r in rows], device=device)
    lengths = torch.tensor([histories.lengths[r.row] for r in rows], device=device).unsqueeze(1)
    width = max(histories.lengths[r.row] for r in rows)
    starts = torch.tensor([r.window_start for r in rows], device=device).unsqueeze(1)
    limits = torch.tensor([r.rep_limit for r in rows], device=device).unsqueeze(1)
    allowed = torch.tensor([r.allowed_length for r in rows], device=device).unsqueeze(1)

    positions = torch.arange(max(width - 1, 0), device=device)
    followers = histories.tokens.index_select(0, index)[:, 1:width]
    counted = (positions >= starts) & (positions < lengths - 1)
    counted &= ~histories.is_breaker.index_select(0, index)[:, 1:width]
    match = histories.match.index_select(0, index)[:, : width - 1]
    match = torch.minimum(torch.minimum(match, limits), positions - starts + 1)
    match = torch.where(counted & (limits >= allowed), match, 0)

    # The penalty grows with the match length, so the largest penalty of a candidate's occurrences is the
    # penalty of its longest match: compute per position, then keep the maximum per token. This keeps the
    # vocabulary-wide work to one scatter.
    exponent = torch.minimum((match - allowed).to(torch.float32), _column([r.max_exponent for r in rows], device))
    penalty = _column([r.multiplier for r in rows], device) * _column([r.base for r in rows], device) ** exponent
    penalty = torch.where(match >= allowed, penalty, 0.0)
    matrix = torch.zeros(len(rows), vocab_size, dtype=torch.float32, device=device)
    return matrix.scatter_reduce_(1, followers, penalty, reduce="amax")


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


def breaker_flags(history: Sequence[int], analysis: BreakerAnalysis | None) -> list[bool]:
    """Which positions hold a single-token breaker (never a DRY candidate)."""
    single = analysis.single if analysis else frozenset()
    return [token in single for token in history]
