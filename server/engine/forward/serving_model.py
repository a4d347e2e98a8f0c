"""The model as the engine runs it: the engine's attention (attention.py) and, on the CPU, Llama's input
projections stacked (fused_layers.py), every linear layer on oneDNN-packed weights (packed_linear.py) and, where
they compiled, the engine's CPU kernels (cpu_kernels.py) for the decode attention, the norms, the MLP's
activation and the linear layers' products (panel_linear.py, in place of oneDNN's). One function, so that the
benchmarks' floor (bench/raw_loop.py, bench/forward.py) runs exactly what the engine runs."""

import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel

from server.engine.forward.attention import use_engine_attention
from server.engine.forward.cpu_kernels import load_cpu_kernels
from server.engine.forward.fused_layers import stack_projections
from server.engine.forward.kernel_norm import use_kernel_norms
from server.engine.forward.packed_linear import pack_linear_layers
from server.engine.forward.panel_linear import panel_linear_layers

log = logging.getLogger(__name__)


def prepare_for_serving(
    model: PreTrainedModel, device: torch.device, *, packed_weights: bool = True, kernel_cache: Path | None = None
) -> None:
    """Sets `model` up in place. `packed_weights`: on the CPU, the stacked projections and packed weights where
    oneDNN supports the dtype here. `kernel_cache`: on the CPU, where the engine's kernels are built and kept (None:
    without them)."""
    use_engine_attention(model)
    if any(hasattr(module, "lora_A") for module in model.modules()):
        # An unmerged adapter's layers read their base layers' weights, and wrap the projections stacking joins.
        log.info("CPU forward: an unmerged adapter, the layers stay as loaded")
        return
    if device.type != "cpu":
        return
    kernels = kernel_cache is not None and load_cpu_kernels(kernel_cache)
    norms = use_kernel_norms(model) if kernels else 0
    if packed_weights:
        stacked = stack_projections(model, kernels)
        panels = panel_linear_layers(model) if kernels else 0
        packed = pack_linear_layers(model)
        if stacked or packed or panels:
            log.info(
                "CPU forward: %d layers' projections stacked, %d more linear layers on the kernels' panels, %d packed",
                stacked,
                panels,
                packed,
            )
    if norms:
        log.info("CPU forward: the engine's kernels for %d norms and, with packed weights, attention and MLP", norms)
