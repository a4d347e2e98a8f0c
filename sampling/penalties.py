"""Repetition (multiplicative, CTRL-style), frequency and presence penalties over a window of the history."""

from collections.abc import Sequence

import torch

from sampling.history import TokenHistories


def token_counts(
    histories: TokenHistories, rows: Sequence[int], windows: Sequence[int], vocab_size: int
) -> torch.Tensor:
    """How often each token occurs in each row's last `window` tokens (0 or -1: the whole history)."""
    device = histories.device
    index = torch.tensor(rows, device=device)
    lengths = torch.tensor([histories.lengths[r] for r in rows], device=device).unsqueeze(1)
    starts = torch.tensor(
        [max(0, histories.lengths[r] - w) if w > 0 else 0 for r, w in zip(rows, windows, strict=True)],
        device=device,
    ).unsqueeze(1)
    width = max(histories.lengths[r] for r in rows)
    positions = torch.arange(width, device=device)
    inside = ((positions >= starts) & (positions < lengths)).to(torch.float32)
    counts = torch.zeros(len(rows), vocab_size, dtype=torch.float32, device=device)
    return counts.scatter_add_(1, histories.tokens.index_select(0, index)[:, :width], inside)


def apply_penalties(
    logits: torch.Tensor,
    counts: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """`repetition`, `frequency`, `presence`: one column value per row."""
    present = counts > 0
    repeated = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(present, repeated, logits)
    return logits - frequency * counts - presence * present.to(logits.dtype)
