"""Linear layers on weights laid out once for oneDNN's CPU matrix product.

A plain `nn.Linear` on the CPU hands its row-major weight to the BLAS on every call; oneDNN can instead re-lay a
weight out once, in the blocked order its kernel reads, and multiply by it directly (what torch.compile's
weight freezing does on the CPU, here without compiling). On the development CPU (2-core AVX2, float32) a decode
step of the embedded model runs about 1.2x faster at one stream and faster still at 8, where the BLAS is slowest
(bench/forward.py; docs/DESIGN.md has the numbers). oneDNN re-lays float32 weights everywhere, bfloat16 ones only
on CPUs with AVX512 (or AVX-NE-CONVERT): elsewhere the layers stay as they are.
"""

from typing import TypeGuard

import torch

from server.engine.forward.module_swap import replace_modules


class PackedLinear(torch.nn.Module):
    """A linear layer's forward on a oneDNN-packed copy of its weight [out, in] (the packed copy is the only one
    kept)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.bias = bias

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> "PackedLinear":
        return cls(linear.weight, linear.bias)

    @classmethod
    def stacked(cls, linears: list[torch.nn.Linear]) -> "PackedLinear":
        """One layer computing several of the same input at once: their outputs side by side."""
        bias = None
        if any(linear.bias is not None for linear in linears):
            bias = torch.cat(
                [
                    linear.bias.detach() if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
                    for linear in linears
                ]
            )
        return cls(torch.cat([linear.weight.detach() for linear in linears]), bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(hidden, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs weights of `dtype` on this CPU."""
    if dtype == torch.float32:
        return torch.backends.mkldnn.is_available()
    return dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Replaces every plain `nn.Linear` of a CPU model (the LM head included) by a PackedLinear; returns how many."""
    return replace_modules(model, lambda child: PackedLinear.of(child) if packable(child) else None)


def packable(module: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    """A plain linear layer on the CPU whose weight oneDNN packs here."""
    return type(module) is torch.nn.Linear and module.weight.device.type == "cpu" and can_pack(module.weight.dtype)
