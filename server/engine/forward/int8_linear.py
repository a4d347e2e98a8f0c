"""Weight-only int8 linear layers (`--quantization int8`): half the bytes of bfloat16 weights, a quarter of float32.

Each output row of a weight keeps its own scale (symmetric, per channel: the row's largest magnitude maps to
127), so one outlier costs only its row precision. The product is torch's own weight-only int8 kernel
(`aten._weight_int8pack_mm`, on the CPU and on CUDA): no host sync and no allocation that depends on data, so a
captured decode step replays it. Activations enter it in the model's dtype, except float32 ones on the CPU, which
go in as bfloat16: there torch's float32 variant of the kernel is 10-20x slower than its bfloat16 one (measured
on a 2-core AVX2 CPU, bench/RESULTS.md); the load-time check (quantization.py) counts that rounding too.
Applied to the decoder's linear layers after the adapter is merged; the embeddings and the LM head keep the
model's dtype.
"""

import torch

from server.engine.forward.module_swap import replace_modules
from server.engine.forward.quantized_linear import QuantizedLinear

QUANTIZED_MAX = 127


class Int8Linear(QuantizedLinear):
    weight: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # [out], in the model's dtype

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / QUANTIZED_MAX
        self.register_buffer("weight", (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(compute_dtype(linear.weight.dtype, linear.weight.device)))

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(rows.to(self.scales.dtype), self.weight, self.scales)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per channel"


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype activations of a `dtype` model enter the int8 product in (see the module's docstring)."""
    if device.type == "cpu" and dtype == torch.float32:
        return torch.bfloat16
    return dtype


def quantize_linear_layers(root: torch.nn.Module) -> int:
    """Replaces every plain linear layer under `root` by an Int8Linear; returns how many."""
    return replace_modules(root, lambda child: Int8Linear(child) if type(child) is torch.nn.Linear else None)
