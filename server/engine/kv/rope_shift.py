"""Moving cached keys to other positions (`--cache-reuse`): RoPE turns each pair of a key's dimensions by an angle
proportional to its position, so a key computed at position p is the key at p + d once every pair is turned by d
times its frequency more. Values carry no position: they move as they are.

The frequencies are the model's own (`inv_freq` of its rotary embedding), so scaled ones (Llama-3.1's) shift
right too. Keys are turned in float32 (the angles' sines and cosines computed in float64) and stored back in
their dtype.
"""

import torch


def rope_frequencies(model: torch.nn.Module) -> torch.Tensor | None:
    """The model's rotary frequencies, [head dim / 2], as its attention layers use them; None for a model without
    a rotary embedding (its cached keys cannot be moved)."""
    for module in model.modules():
        frequencies = getattr(module, "inv_freq", None)
        if isinstance(frequencies, torch.Tensor):
            return frequencies
    return None


def shifted_keys(keys: torch.Tensor, shift: int, frequencies: torch.Tensor) -> torch.Tensor:
    """`keys` ([..., positions, head dim]) as they would be `shift` positions later (earlier when negative), in
    transformers' layout: a dimension i pairs with i + head dim / 2."""
    # Angles and their sines in float64: thousands of radians (a shift of thousands of positions times a
    # frequency near 1) leave float32 a thousandth of a radian of precision.
    angles = shift * frequencies.to(device=keys.device, dtype=torch.float64)
    cos = torch.cat((angles.cos(), angles.cos())).float()
    sin = torch.cat((angles.sin(), angles.sin())).float()
    turned = keys.float()
    half = turned.shape[-1] // 2
    rotated_half = torch.cat((-turned[..., half:], turned[..., :half]), dim=-1)
    return (turned * cos + rotated_half * sin).to(keys.dtype)
