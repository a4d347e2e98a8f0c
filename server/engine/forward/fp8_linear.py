"""fp8 linear layers (`--quantization fp8`): e4m3 weights and activations on the fp8 tensor cores of Ada, Hopper
and Blackwell GPUs (compute capability 8.9 and up): half the bytes of bfloat16 weights, and products at twice
bfloat16's rate there.

Each output row of a weight keeps its own scale (its largest magnitude maps to e4m3's 448), and each activation
row (one token) is scaled the same way when it enters the layer, so a token's result never depends on the other
rows of its batch. torch's `_scaled_mm` takes only per-tensor scales on every fp8 GPU (its per-row form exists
on some architectures only), so the product runs with unit scales and the two scales multiply its output: one
small elementwise pass, no host sync, no allocation that depends on data (a captured decode step replays it).

Elsewhere `--quantization fp8` is a start-up error (`fp8_problem`): older GPUs have no fp8 products, and with
torch's CPU version of the kernel a decode step of the embedded model is 4-7x slower than float32 on a 2-core
AVX2 CPU (bench/RESULTS.md). The layers
still run on the CPU, which is how `bench.fidelity` measures what fp8 changes without a GPU.
"""

from typing import TypeGuard

import torch

from server.engine.forward.module_swap import replace_modules
from server.engine.forward.quantized_linear import QuantizedLinear

E4M3_MAX = 448.0
FP8_COMPUTE_CAPABILITY = (8, 9)


class Fp8Linear(QuantizedLinear):
    weight: torch.Tensor  # float8_e4m3fn [out, in]
    scales: torch.Tensor  # float32 [1, out]
    unit: torch.Tensor  # float32 scalar 1: the kernel's per-tensor scales

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__(linear)
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / E4M3_MAX
        self.register_buffer("weight", (weight / scales).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn))
        self.register_buffer("scales", scales.t().contiguous())
        self.register_buffer("unit", torch.ones((), device=weight.device))

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.float()
        row_scales = rows.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / E4M3_MAX
        codes = (rows / row_scales).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        # The weight's transpose is the column-major operand the kernel wants; float32 out: the scales come after.
        product = torch._scaled_mm(
            codes, self.weight.t(), scale_a=self.unit, scale_b=self.unit, out_dtype=torch.float32
        )
        return product * row_scales * self.scales

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 per channel and token"


def fp8_problem(device: torch.device) -> str | None:
    """Why `--quantization fp8` cannot serve on `device`, or None where it can."""
    choices = "use --quantization none, int8 or int4 there"
    if device.type != "cuda":
        gpus = "an NVIDIA GPU with fp8 products (Ada, Hopper, Blackwell)"
        return f"--quantization fp8 needs {gpus}, not {device}: {choices}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_COMPUTE_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"--quantization fp8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); {name} is "
            f"{major}.{minor}: {choices}"
        )
    return None


def quantize_linear_layers_fp8(root: torch.nn.Module) -> int:
    """Replaces every plain linear layer under `root` whose widths the kernel takes (multiples of 16) by an
    Fp8Linear; returns how many."""
    return replace_modules(root, lambda child: Fp8Linear(child) if _fits(child) else None)


def _fits(module: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    return type(module) is torch.nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0
