"""Weight-only int4 linear layers (`--quantization int4`, groups of `--int4-group-size` input columns, default
128): a quarter of the bytes of bfloat16 weights.

Each group of an output row keeps a scale and an offset (asymmetric: the group's minimum maps to 0 and its
maximum to 15), the scheme of torch's own int4 kernels, which do the product: `aten._weight_int4pack_mm_for_cpu` on
the CPU and `aten._weight_int4pack_mm` on CUDA (tensor cores, bfloat16 activations). Neither syncs the host nor
allocates by data, so a captured decode step replays them. Activations enter in bfloat16 and leave in the model's
dtype; the load-time check (quantization.py) counts that rounding too.

A layer whose input width is not a multiple of the group size takes the largest smaller group that divides it
(the embedded model's 576-wide layers get groups of 64 when 128 is asked); one that no group divides keeps its
weights. Applied to the decoder's linear layers after the adapter is merged.
"""

import torch

from server.engine.forward.module_swap import replace_modules
from server.engine.forward.quantized_linear import QuantizedLinear
from server.engine.options import INT4_GROUP_SIZES

LEVELS = 15  # 4 bits: 0..15
MIDDLE = 8  # the kernels read a weight as (q - 8) * scale + offset


class Int4Linear(QuantizedLinear):
    weight: torch.Tensor  # packed for the device's kernel
    scales_and_zeros: torch.Tensor  # bfloat16 [groups, out, 2]: each group's scale and offset

    def __init__(self, linear: torch.nn.Linear, group_size: int) -> None:
        super().__init__(linear)
        self.group_size = group_size
        levels, scales_and_zeros = group_quantized(linear.weight.detach().float(), group_size)
        self.register_buffer("weight", packed(levels))
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16))

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        kernel = (
            torch.ops.aten._weight_int4pack_mm
            if self.weight.device.type == "cuda"
            else torch.ops.aten._weight_int4pack_mm_for_cpu
        )
        return kernel(rows.to(torch.bfloat16), self.weight, self.group_size, self.scales_and_zeros)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group_size}"


def group_quantized(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The int32 levels [out, in] (0..15) and the [groups, out, 2] scales and offsets of a float weight."""
    out_features, in_features = weight.shape
    groups = weight.reshape(out_features, in_features // group_size, group_size)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scales = (high - low).clamp(min=1e-6) / LEVELS
    levels = ((groups - low) / scales).round().clamp(0, LEVELS).to(torch.int32).reshape(out_features, in_features)
    offsets = low + scales * MIDDLE
    return levels, torch.cat([scales, offsets], -1).transpose(0, 1).contiguous()


def dequantized(levels: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """The float weight the kernels compute with (for tests and measurements)."""
    out_features, in_features = levels.shape
    per_row = scales_and_zeros.float().transpose(0, 1)  # [out, groups, 2]
    groups = (levels.float() - MIDDLE).reshape(out_features, per_row.shape[1], -1)
    return (groups * per_row[..., :1] + per_row[..., 1:]).reshape(out_features, in_features)


def packed(levels: torch.Tensor) -> torch.Tensor:
    """The levels in the layout of the device's kernel: the CPU's takes them as int32, CUDA's as bytes of two."""
    if levels.device.type != "cuda":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels, 8)
    in_features = levels.shape[1]
    tiles = next(t for t in (8, 4, 2) if in_features % (t * 16) == 0)
    pairs = (levels[:, ::2] << 4 | levels[:, 1::2]).to(torch.uint8)
    return torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)


def group_for(in_features: int, wanted: int) -> int | None:
    """The group size a layer `in_features` wide gets: `wanted`, or the largest smaller one that divides it."""
    return next((size for size in INT4_GROUP_SIZES if size <= wanted and in_features % size == 0), None)


def quantize_linear_layers_int4(root: torch.nn.Module, group_size: int) -> int:
    """Replaces every plain linear layer under `root` that a group size divides by an Int4Linear; returns how
    many."""

    def swapped(child: torch.nn.Module) -> torch.nn.Module | None:
        if type(child) is not torch.nn.Linear:
            return None
        size = group_for(child.in_features, group_size)
        return Int4Linear(child, size) if size is not None else None

    return replace_modules(root, swapped)
