"""The steps that reshape the distribution without removing tokens (docs/SAMPLERS.md): plain
temperature, dynamic temperature (which replaces it for the rows that use it) and smoothing. Batched over the rows
that use each; masked tokens stay -inf."""

from collections.abc import Sequence

import torch

from sampling.candidates import possible
from sampling.filters import per_row
from sampling.params import GREEDY_BELOW_TEMPERATURE


def apply_temperature(logits: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    return logits / per_row(temperatures, logits)


def apply_dynamic_temperature(
    logits: torch.Tensor, low: Sequence[float], high: Sequence[float], exponent: Sequence[float]
) -> torch.Tensor:
    """T = low + (high - low) * (H / ln N) ** exponent, H the entropy (at least 1e-10) and N the tokens still
    possible (ln N taken as 1e-10 when one is left); logits / T. A temperature that small means greedy: only the
    top token stays."""
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = (-torch.nansum(log_probs.exp() * log_probs, dim=-1, keepdim=True)).clamp(min=1e-10)
    count = possible(logits).sum(dim=-1, keepdim=True, dtype=torch.int32).to(logits.dtype)
    max_entropy = torch.where(count > 1, count.log(), torch.full_like(count, 1e-10))
    lows = per_row(low, logits)
    temperature = lows + (per_row(high, logits) - lows) * (entropy / max_entropy) ** per_row(exponent, logits)
    greedy = temperature < GREEDY_BELOW_TEMPERATURE
    not_top = logits < logits.max(dim=-1, keepdim=True).values
    logits = logits.masked_fill(greedy & not_top, float("-inf"))
    return logits / torch.where(greedy, torch.ones_like(temperature), temperature)


def apply_smoothing(logits: torch.Tensor, factor: Sequence[float], curve: Sequence[float]) -> torch.Tensor:
    """Quadratic sampling: d = l - max, l' = max - k f d^2 + s f d^3 with k = (3 - curve) / 2, s = (curve - 1) / 2;
    -inf stays -inf."""
    top = logits.max(dim=-1, keepdim=True).values
    finite = possible(logits)
    d = torch.where(finite, logits - top, 0.0)
    f, c = per_row(factor, logits), per_row(curve, logits)
    smoothed = top - (3 - c) / 2 * f * d**2 + (c - 1) / 2 * f * d**3
    return torch.where(finite, smoothed, logits)
