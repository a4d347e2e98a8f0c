"""Llama's RMSNorm on the engine's CPU kernel (kernels/rms_norm.cpp): one operator where transformers' module runs
seven, which on the CPU costs more than the arithmetic at one stream (a decode step has 2 a layer, plus the last)."""

import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from server.engine.forward.cpu_kernels import KERNEL_DTYPES
from server.engine.forward.module_swap import replace_modules


class KernelRMSNorm(torch.nn.Module):
    def __init__(self, norm: LlamaRMSNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.ops.rpserve_cpu.rms_norm(hidden_states.contiguous(), self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, on the CPU kernel"


def use_kernel_norms(model: torch.nn.Module) -> int:
    """Replaces every Llama RMSNorm of a CPU model in float32 or bfloat16 by the kernel's; returns how many."""
    return replace_modules(model, _kernel_norm)


def _kernel_norm(module: torch.nn.Module) -> torch.nn.Module | None:
    if type(module) is LlamaRMSNorm and module.weight.dtype in KERNEL_DTYPES:
        return KernelRMSNorm(module)
    return None
