"""Truncation filters, batched: each masks the tokens it removes with -inf, on one row's own threshold.

They work in place on logits the sampler owns."""

import math
from collections.abc import Sequence

import torch

from sampling.candidates import possible


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


# text-generation-webui's truncation samplers (docs/SAMPLERS.md). Each takes the rows that use it and
# one value per row; removed tokens become -inf, and every rule keeps at least one token.


def mask_top_n_sigma(logits: torch.Tensor, n: Sequence[float]) -> torch.Tensor:
    """Keeps logit_i >= max - n * sigma, sigma the (N-1) standard deviation of the finite logits only (not the
    masked ones as zeros, text-generation-webui's bug). Flat logits: sigma 0, all stay."""
    count = possible(logits).sum(dim=-1, keepdim=True, dtype=torch.int32)
    values = torch.nan_to_num(logits, neginf=0.0)  # masked logits out of the sums
    mean = values.sum(dim=-1, keepdim=True) / count
    # Sum of squares about the mean as E[x^2] - mean^2, accumulated in float64 (one pass instead of two).
    squares = values.square().sum(dim=-1, keepdim=True, dtype=torch.float64) - count * mean.double() ** 2
    sigma = (squares.clamp(min=0) / (count - 1).clamp(min=1)).sqrt().to(logits.dtype)
    floors = logits.amax(dim=-1, keepdim=True) - per_row(n, logits) * sigma
    return logits.masked_fill_(logits < floors, float("-inf"))


def mask_typical(logits: torch.Tensor, mass: Sequence[float]) -> torch.Tensor:
    """Locally typical sampling: tokens ranked by |-ln p_i - H|, kept in that order until the mass reaches
    `typical_p`, with every token tied in that score with the last one kept."""
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    entropy = -torch.nansum(probs * log_probs, dim=-1, keepdim=True)
    scores = (-log_probs - entropy).abs()
    limits = per_row(mass, logits)
    for width in _head_widths(logits):
        # The `width` most typical tokens, in order: enough once their mass reaches the limit on every row.
        head_scores, order = scores.topk(width, dim=-1, largest=False)
        cumulative = probs.gather(1, order).cumsum(dim=-1)
        if width == logits.shape[-1] or bool((cumulative[:, -1:] >= limits).all()):
            break
    last = (cumulative < limits).sum(dim=-1, keepdim=True).clamp(max=width - 1)
    return logits.masked_fill_(scores > head_scores.gather(1, last), float("-inf"))


def mask_tail_free(logits: torch.Tensor, z: Sequence[float]) -> torch.Tensor:
    """Tail-free sampling over the whole sorted vocabulary (masked tokens are zeros at the tail): the absolute
    second differences of the sorted probabilities, normalised; sorted position j (1..V-2) goes once their running
    sum up to j-1 passes z; the first always stays, the last always goes. Flat: the sum is 0, only the last goes.

    The cut is found on the most probable tokens only when that decides it: the differences beyond the head sum to
    at most twice the head's last probability, so a cut that lands at the same place whatever that remainder is
    exact; otherwise the head grows, up to the whole sorted vocabulary."""
    probs = torch.softmax(logits, dim=-1)
    vocab = logits.shape[-1]
    limits = per_row(z, logits)
    for width in _head_widths(logits):
        head, order = probs.topk(width, dim=-1)
        running = head.diff(dim=-1).diff(dim=-1).abs().cumsum(dim=-1)
        total = running[:, -1:]
        if width == vocab:
            break
        removed_early = running > limits * (total + 2 * head[:, -2:-1])  # with the most the remainder can add
        removed_late = running > limits * total  # with nothing from it
        if bool(((removed_early == removed_late).all(dim=-1) & removed_early[:, -1]).all()):
            break
    removed = running > limits * total  # NaN (a flat distribution: total 0) compares False: nothing goes
    if width == vocab:
        edge = torch.zeros_like(removed[:, :1])
        removed = torch.cat([edge, removed, ~edge], dim=-1)
        return logits.masked_fill_(removed.scatter(1, order, removed), float("-inf"))
    # Decided within the head: the kept tokens are its first positions, up to the first one that goes.
    kept = torch.cat([torch.ones_like(removed[:, :1]), ~removed], dim=-1)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order[:, : kept.shape[-1]], kept)
    return logits.masked_fill_(~keep, float("-inf"))


def _head_widths(logits: torch.Tensor) -> list[int]:
    """How many of the most likely tokens the typical and tail-free filters look at first: on a GPU the whole
    vocabulary (sorting it is cheap there, and deciding to look further would cost a host synchronisation); on a
    CPU a few hundred, then more only when that does not decide."""
    vocab = logits.shape[-1]
    if logits.is_cuda:
        return [vocab]
    widths = [min(256, vocab)]
    while widths[-1] < vocab:
        widths.append(min(widths[-1] * 8, vocab))
    return widths


def mask_top_a(logits: torch.Tensor, a: Sequence[float]) -> torch.Tensor:
    """Removes p_i < a * max(p)^2."""
    probs = torch.softmax(logits, dim=-1)
    limits = per_row(a, logits) * probs.max(dim=-1, keepdim=True).values ** 2
    return logits.masked_fill_(probs < limits, float("-inf"))


def mask_epsilon(logits: torch.Tensor, cutoff: Sequence[float]) -> torch.Tensor:
    """Removes p_i < epsilon (the cutoff is in units of 1e-4), except the top-logit token(s)."""
    probs = torch.softmax(logits, dim=-1)
    return _mask_below_except_top(logits, probs, per_row(cutoff, logits) * 1e-4)


def mask_eta(logits: torch.Tensor, cutoff: Sequence[float]) -> torch.Tensor:
    """Removes p_i < min(eps, sqrt(eps) * exp(-H)) (eps in units of 1e-4), except the top-logit token(s)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    entropy = -torch.nansum(probs * log_probs, dim=-1, keepdim=True)
    eps = per_row(cutoff, logits) * 1e-4
    return _mask_below_except_top(logits, probs, torch.minimum(eps, eps.sqrt() * torch.exp(-entropy)))


def _mask_below_except_top(logits: torch.Tensor, probs: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    top = logits >= logits.max(dim=-1, keepdim=True).values
    return logits.masked_fill_((probs < limits) & ~top, float("-inf"))


def per_row(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """One value per row of `like`, as a column on its device."""
    return torch.tensor(values, device=like.device, dtype=like.dtype).unsqueeze(1)
