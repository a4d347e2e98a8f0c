"""Mirostat v2 (docs/SAMPLERS.md) as one step of the chain: each row keeps its surprise target `mu`
(2 tau at the start); the step keeps the tokens whose surprise -log2 p is at most mu (at least the top one, ties by
value) and the token is drawn from those, renormalised; then mu -= eta * (surprise of the drawn token - tau).
Steps after it in the order cannot change the draw (the sampler keeps its logits), as in text-generation-webui."""

import torch


def mask_mirostat(logits: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """`mu`: a (rows, 1) column. The sorted distribution is cut at the first token with -log2 p > mu, that is
    p < 2^-mu: by value, without sorting, the tokens with p >= min(2^-mu, max p) stay (the top one at least)."""
    probs = torch.softmax(logits, dim=-1)
    floors = torch.minimum(torch.exp2(-mu), probs.amax(dim=-1, keepdim=True))
    return logits.masked_fill_(probs < floors, float("-inf"))


def updated_mu(mu: torch.Tensor, drawn_probability: torch.Tensor, tau: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """mu after drawing a token of probability `drawn_probability` (in the kept, renormalised distribution)."""
    return mu - eta * (-torch.log2(drawn_probability) - tau)
