"""The sampling chain, batched over requests: logit bias -> top-k -> top-p -> min-p -> temperature -> draw.

Each row of `logits` belongs to one request with its own parameters and random generator; every filter is a
vectorised mask over the whole batch, so a step costs one pass over the vocabulary whatever the batch size.
"""

from collections.abc import Sequence

import torch

from sampling.params import SamplingParams


def sample_next_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """Draws one token id per row. Greedy rows (temperature 0) take the arg-max of the biased logits."""
    logits = apply_logit_bias(logits.float(), params)
    chosen = logits.argmax(dim=-1)
    sampled_rows = [row for row, p in enumerate(params) if not p.greedy]
    if sampled_rows:
        rows = torch.tensor(sampled_rows, device=logits.device)
        subset = [params[row] for row in sampled_rows]
        probs = probabilities(logits.index_select(0, rows), subset)
        for position, row in enumerate(sampled_rows):
            chosen[row] = torch.multinomial(probs[position], 1, generator=generators[row])[0]
    return chosen.tolist()


def probabilities(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution each row is drawn from: filters on the untempered distribution, temperature last."""
    logits = mask_top_k(logits, [p.top_k for p in params])
    logits = mask_top_p(logits, [p.top_p for p in params])
    logits = mask_min_p(logits, [p.min_p for p in params])
    temperatures = torch.tensor([p.temperature for p in params], device=logits.device, dtype=logits.dtype)
    return torch.softmax(logits / temperatures.unsqueeze(1), dim=-1)


def apply_logit_bias(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    for row, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), device=logits.device)
            bias = torch.tensor(list(p.logit_bias.values()), device=logits.device, dtype=logits.dtype)
            logits[row].index_add_(0, ids, bias)
    return logits


def mask_top_k(logits: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    vocab = logits.shape[-1]
    ks = [k if 0 < k < vocab else vocab for k in top_k]
    if all(k == vocab for k in ks):
        return logits
    kth = torch.tensor(ks, device=logits.device) - 1
    thresholds = logits.sort(dim=-1, descending=True).values.gather(1, kth.unsqueeze(1))
    return logits.masked_fill(logits < thresholds, float("-inf"))


def mask_top_p(logits: torch.Tensor, top_p: Sequence[float]) -> torch.Tensor:
    if all(p >= 1 for p in top_p):
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    limits = torch.tensor(top_p, device=logits.device, dtype=logits.dtype).unsqueeze(1)
    kept = (mass_before < limits).sum(dim=-1, keepdim=True).clamp(min=1)
    thresholds = sorted_probs.gather(1, kept - 1)
    return logits.masked_fill(probs < thresholds, float("-inf"))


def mask_min_p(logits: torch.Tensor, min_p: Sequence[float]) -> torch.Tensor:
    if all(p <= 0 for p in min_p):
        return logits
    probs = torch.softmax(logits, dim=-1)
    floors = probs.max(dim=-1, keepdim=True).values * torch.tensor(
        min_p, device=logits.device, dtype=logits.dtype
    ).unsqueeze(1)
    return logits.masked_fill(probs < floors, float("-inf"))
