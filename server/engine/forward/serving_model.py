"""The model as the engine runs it: the engine's attention (attention.py) and, on the CPU, Llama's input
projections stacked (fused_layers.py) and every linear layer on oneDNN-packed weights (packed_linear.py). One
function, so that the benchmarks' floor (bench/raw_loop.py, bench/forward.py) runs exactly what the engine runs."""

import logging

import torch
from transformers import PreTrainedModel

from server.engine.forward.attention import use_engine_attention
from server.engine.forward.fused_layers import stack_projections
from server.engine.forward.packed_linear import pack_linear_layers

log = logging.getLogger(__name__)


def prepare_for_serving(model: PreTrainedModel, device: torch.device, *, packed_weights: bool = True) -> None:
    """Sets `model` up in place. `packed_weights`: on the CPU, the stacked projections and packed weights where
    oneDNN supports the dtype here."""
    use_engine_attention(model)
    if any(hasattr(module, "lora_A") for module in model.modules()):
        # An unmerged adapter's layers read their base layers' weights, and wrap the projections stacking joins.
        log.info("CPU forward: an unmerged adapter, the layers stay as loaded")
        return
    if packed_weights and device.type == "cpu":
        stacked = stack_projections(model)
        packed = pack_linear_layers(model)
        if stacked or packed:
            log.info("CPU forward: %d layers' projections stacked, %d more linear layers packed", stacked, packed)
