"""Compacting the chain's work to the candidates: once a truncation step has left each row a few possible tokens,
the rest of the chain runs on those only (gathered with their token ids, like llama.cpp's candidate lists), then
they go back into the vocabulary. Exact: every step looks at the possible tokens only, and two masked columns are
kept so that tail-free sampling still sees the step down to zero. Only on the CPU, where a full-vocabulary pass
costs about a millisecond per batch of eight; on a GPU it costs microseconds, and deciding would need a host
synchronisation."""

import torch

# Compact only when that leaves at most this share of the vocabulary.
_MOST_KEPT_SHARE = 1 / 8
# Steps that need columns to be token ids: they run before any compaction.
TOKEN_ID_STEPS = frozenset({"penalties", "dry"})


def possible(logits: torch.Tensor) -> torch.Tensor:
    """The tokens not masked (above -inf): several times cheaper than `torch.isfinite` on a CPU."""
    return logits > float("-inf")


def compacted(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The possible tokens' logits of each row and their token ids (plus at least two masked columns), or None when
    that would not save work."""
    if logits.device.type != "cpu":
        return None
    width = int(possible(logits).sum(dim=-1, dtype=torch.int32).max()) + 2
    if width > logits.shape[-1] * _MOST_KEPT_SHARE:
        return None
    return logits.topk(width, dim=-1)


def expanded(values: torch.Tensor, token_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Compacted logits back at their token ids; every other token masked."""
    full = torch.full((values.shape[0], vocab), float("-inf"), device=values.device, dtype=values.dtype)
    return full.scatter(1, token_ids, values)
