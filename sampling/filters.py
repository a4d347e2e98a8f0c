"""Truncation filters, batched: each masks the tokens it removes with -inf, on one row's own threshold.

They work in place on logits the sampler owns."""

import math
from collections.abc import Sequence

import torch


def mask_top_k(logits: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    vocab = logits.shape[-1]
    ks = [k if 0 < k < vocab else vocab for k in top_k]
    if all(k == vocab for k in ks):
        return logits
    kth = torch.tensor(ks, device=logits.device) - 1
    thresholds = logits.sort(dim=-1, descending=True).values.gather(1, kth.unsqueeze(1))
    return logits.masked_fill_(logits < thresholds, float("-inf"))


def mask_top_p(logits: torch.Tensor, top_p: Sequence[float]) -> torch.Tensor:
    if all(p >= 1 for p in top_p):
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    limits = torch.tensor(top_p, device=logits.device, dtype=logits.dtype).unsqueeze(1)
    kept = (mass_before < limits).sum(dim=-1, keepdim=True).clamp(min=1)
    thresholds = sorted_probs.gather(1, kept - 1)
    return logits.masked_fill_(probs < thresholds, float("-inf"))


def mask_min_p(logits: torch.Tensor, min_p: Sequence[float]) -> torch.Tensor:
    """Keeps token i iff p_i >= min_p * max p; ties are kept and the top token always is. On logits that is
    logit_i >= max logit + log(min_p): no softmax needed."""
    if all(p <= 0 for p in min_p):
        return logits
    offsets = torch.tensor([math.log(p) if p > 0 else -math.inf for p in min_p], device=logits.device)
    floors = logits.max(dim=-1, keepdim=True).values + offsets.to(logits.dtype).unsqueeze(1)
    return logits.masked_fill_(logits < floors, float("-inf"))
