"""Replacing a model's submodules in place: the CPU forward's packed and stacked layers, quantization's layers."""

from collections.abc import Callable

import torch
from transformers import PreTrainedModel


def replace_modules(root: torch.nn.Module, replacement: Callable[[torch.nn.Module], torch.nn.Module | None]) -> int:
    """Puts `replacement(child)` in the place of every submodule under `root` for which it returns a module (None
    keeps the child); returns how many were replaced. The replacements themselves are not visited."""
    replaced = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced


def decoder_layers(model: PreTrainedModel) -> torch.nn.Module:
    """The decoder's stack of layers (`model.model.layers`): what quantization replaces layers in."""
    return getattr(model.get_decoder(), "layers")  # noqa: B009  (typed as a Tensor by torch)
