"""Linear layers on the engine's own products kernel (kernels/panel_linear.cpp), for a CPU model whose kernels
compiled: each weight [out, in] re-laid once as panels of 16 output columns, [out / 16, in, 16], the only copy
kept. Measured against oneDNN's packed weights (bench/RESULTS.md): faster at the few rows of a decode step, where
the product is bound by reading the weights, and as fast at the hundreds of a prompt chunk."""

import torch

from server.engine.forward.cpu_kernels import KERNEL_DTYPES
from server.engine.forward.module_swap import replace_modules

PANEL = 16  # output columns a panel holds


class PanelLinear(torch.nn.Module):
    """A bias-free linear layer's forward on its weight's panels."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        panels = weight.detach().view(self.out_features // PANEL, PANEL, self.in_features).transpose(1, 2)
        self.panels = panels.contiguous()

    @classmethod
    def stacked(cls, linears: list[torch.nn.Linear]) -> "PanelLinear":
        """One layer computing several of the same input at once: their outputs side by side."""
        return cls(torch.cat([linear.weight.detach() for linear in linears]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.ops.rpserve_cpu.panel_linear(hidden.contiguous(), self.panels)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, in panels of {PANEL} columns"


def panel_linear_layers(model: torch.nn.Module) -> int:
    """Replaces every plain `nn.Linear` of a CPU model that the kernel computes (the LM head included) by a
    PanelLinear; returns how many. Needs the CPU kernels loaded."""
    return replace_modules(model, _on_panels)


def _on_panels(module: torch.nn.Module) -> PanelLinear | None:
    return PanelLinear(module.weight) if isinstance(module, torch.nn.Linear) and panelable([module]) else None


def panelable(linears: list[torch.nn.Linear]) -> bool:
    """Plain CPU linear layers without bias, in a dtype the kernels compute in, of 16k outputs together."""
    return (
        all(type(linear) is torch.nn.Linear and linear.bias is None for linear in linears)
        and all(linear.weight.device.type == "cpu" and linear.weight.dtype in KERNEL_DTYPES for linear in linears)
        and sum(linear.out_features for linear in linears) % PANEL == 0
    )
