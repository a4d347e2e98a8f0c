"""XTC, Exclude Top Choices (docs/SAMPLERS.md): on the rows whose coin came up this step, every token with
p >= threshold but the least probable of them is removed; nothing when fewer than two reach it, and nothing at all
(the step is skipped for that row) when the newline token or EOS would go, which keeps replies from running on."""

from collections.abc import Sequence

import torch

from sampling.filters import per_row


def mask_xtc(
    logits: torch.Tensor, threshold: Sequence[float], acts: torch.Tensor, protected: torch.Tensor
) -> torch.Tensor:
    """`acts`: a (rows, 1) bool column, the coin of each row; `protected`: which columns are the newline or EOS
    token (broadcast over the rows, or one row each). By value,
    without sorting: every token that reaches the threshold and is more probable than the least probable one
    that does (tokens tied with that one all stay; which of them text-generation-webui keeps is its sort's
    arbitrary choice)."""
    probs = torch.softmax(logits, dim=-1)
    reaches = probs >= per_row(threshold, logits)
    least = torch.where(reaches, probs, torch.inf).amin(dim=-1, keepdim=True)
    removed = reaches & (probs > least)
    acts = acts & ~(removed & protected).any(dim=-1, keepdim=True)
    return logits.masked_fill_(removed & acts, float("-inf"))
