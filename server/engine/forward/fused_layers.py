"""Llama's attention and MLP with their input projections stacked into one matrix product each (queries, keys and
values; gate and up), on oneDNN-packed weights (packed_linear.py): on the CPU a decode step's many small products
pay a fixed cost each, and two products read the same weights at a higher rate than five (bench/forward.py,
docs/DESIGN.md).

The forwards are transformers' Llama ones (its rotary embedding and attention interface, so the engine's
attention and masks apply unchanged) with the stacked product split where the separate ones were. Only modules
that are exactly transformers' Llama classes are replaced: another architecture's attention may differ (query and
key norms, biases, sliding windows) and keeps its own.

With the engine's CPU kernels loaded (cpu_kernels.py), a decode step's attention over the bucket cache is one
kernel call a bucket (the rotary embedding, the cache write and the attention; kernels/decode_attention.cpp) and
the MLP's activation one more, in place of some twenty small operators a layer. A mixed step (mixed_step.py) runs
its prompt chunks' attention on the chunk kernel (kernels/chunk_attention.cpp) and its decode rows' on the
decode kernel, the rows of both through one product on each side.
"""

from collections.abc import Callable
from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from server.engine.forward.cpu_kernels import KERNEL_DTYPES
from server.engine.forward.mixed_layout import MixedLayout
from server.engine.forward.module_swap import replace_modules
from server.engine.forward.packed_linear import PackedLinear, packable
from server.engine.forward.panel_linear import PanelLinear, panelable
from server.engine.kv.step_layout import StepLayout

# What the decode attention kernel computes for: head dimensions, query heads per key/value head.
_KERNEL_HEAD_DIMS = (64, 128)
_KERNEL_MAX_GROUPS = 16


class StackedAttention(torch.nn.Module):
    def __init__(self, attention: LlamaAttention, kernels: bool) -> None:
        """`kernels`: the engine's CPU kernels are loaded (a decode step then runs on them where they apply)."""
        super().__init__()
        # What transformers' attention functions read from their module.
        self.config = attention.config
        self.layer_idx = attention.layer_idx
        self.head_dim = attention.head_dim
        self.num_key_value_groups = attention.num_key_value_groups
        self.scaling = attention.scaling
        self.is_causal = attention.is_causal
        self.splits = [attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features]
        self.qkv_proj = _stacked_linear([attention.q_proj, attention.k_proj, attention.v_proj], kernels)
        self.o_proj = attention.o_proj
        self.heads = attention.config.num_attention_heads
        self.decode_kernel = (
            kernels
            and self.head_dim in _KERNEL_HEAD_DIMS
            and self.num_key_value_groups <= _KERNEL_MAX_GROUPS
            and attention.q_proj.weight.dtype in KERNEL_DTYPES
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        layout: StepLayout | MixedLayout | None = kwargs.get("bucket_layout")
        if isinstance(layout, MixedLayout):
            return self._mixed(hidden_states, position_embeddings, layout), None
        if self.decode_kernel and layout is not None and layout.stored_as_computed:
            return self._decode_on_kernel(hidden_states, position_embeddings, layout), None
        input_shape = hidden_states.shape[:-1]
        query, key, value = self._rotated_heads(self.qkv_proj(hidden_states), *position_embeddings)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights

    def _decode_on_kernel(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], layout: StepLayout
    ) -> torch.Tensor:
        """A decode step ([batch, 1, hidden]) bucket by bucket on the kernel, which writes the buckets itself."""
        cos, sin = (part[:, 0] for part in position_embeddings)
        outputs = self._attend_on_kernel(self.qkv_proj(hidden_states)[:, 0], cos, sin, layout)
        return self.o_proj((torch.cat(outputs) if len(outputs) > 1 else outputs[0]).unsqueeze(1))

    def _attend_on_kernel(
        self, stacked: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: StepLayout
    ) -> list[torch.Tensor]:
        """Decode rows' attention outputs [rows, heads x head dim], bucket after bucket, from their stacked
        projections [rows, queries + keys + values] and rotary tables [rows, head dim]."""
        outputs = []
        for start, keys, values, positions in layout.in_place(self.layer_idx):
            rows = slice(start, start + positions.shape[0])
            outputs.append(
                torch.ops.rpserve_cpu.decode_attention(
                    stacked[rows], cos[rows], sin[rows], keys, values, positions, self.heads, self.scaling
                )
            )
        return outputs

    def _mixed(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], layout: MixedLayout
    ) -> torch.Tensor:
        """A mixed step's rows ([1, rows, hidden]: prompt chunks', then decode rows', mixed_step.py): one product
        on each side of attention for all of them, attention part by part."""
        stacked = self.qkv_proj(hidden_states[0])
        cos, sin = (part[0] for part in position_embeddings)
        outputs, start = [], 0
        for chunk in layout.chunks:
            rows = slice(start, start + chunk.length)
            outputs.append(self._chunk_attention(stacked[rows], cos[rows], sin[rows], chunk.cache))
            start += chunk.length
        if layout.decode is not None:
            outputs.extend(self._attend_on_kernel(stacked[start:], cos[start:], sin[start:], layout.decode))
        return self.o_proj(torch.cat(outputs).unsqueeze(0))

    def _chunk_attention(self, stacked: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Any) -> torch.Tensor:
        """A prompt chunk's attention output [chunk, heads x head dim] over its prompt's cache, which it extends, on
        the kernel (kernels/chunk_attention.cpp)."""
        query, key, value = self._rotated_heads(stacked.unsqueeze(0), cos.unsqueeze(0), sin.unsqueeze(0))
        key, value = cache.update(key, value, self.layer_idx)
        return torch.ops.rpserve_cpu.chunk_attention(query, key, value, self.scaling)

    def _rotated_heads(
        self, stacked: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stacked projections [batch, positions, queries + keys + values] as transformers' attention takes
        them, [batch, heads, positions, head dim] each, the queries and keys rotated."""
        query, key, value = (
            part.view(*stacked.shape[:-1], -1, self.head_dim).transpose(1, 2) for part in stacked.split(self.splits, -1)
        )
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        return query, key, value


class StackedMLP(torch.nn.Module):
    def __init__(self, mlp: LlamaMLP, kernels: bool) -> None:
        """`kernels`: the engine's CPU kernels are loaded (SiLU then runs on them, fused with its product)."""
        super().__init__()
        self.gate_up_proj = _stacked_linear([mlp.gate_proj, mlp.up_proj], kernels)
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn
        self.silu_kernel = (
            kernels
            and mlp.config.hidden_act == "silu"
            and mlp.gate_proj.out_features % 8 == 0  # the kernel's vectors of eight
            and mlp.gate_proj.weight.dtype in KERNEL_DTYPES
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.silu_kernel:
            return self.down_proj(torch.ops.rpserve_cpu.silu_mul(self.gate_up_proj(hidden)))
        gate, up = self.gate_up_proj(hidden).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def stack_projections(model: torch.nn.Module, kernels: bool) -> int:
    """Replaces every Llama attention and MLP of a CPU model whose projections are plain linear layers that oneDNN
    can pack by its stacked form; returns how many. `kernels`: the engine's CPU kernels are loaded."""
    return replace_modules(model, lambda module: _stacked(module, kernels))


def _stacked(module: torch.nn.Module, kernels: bool) -> torch.nn.Module | None:
    if type(module) is LlamaAttention and _stackable([module.q_proj, module.k_proj, module.v_proj], kernels):
        return StackedAttention(module, kernels)
    if type(module) is LlamaMLP and _stackable([module.gate_proj, module.up_proj], kernels):
        return StackedMLP(module, kernels)
    return None


def _stackable(linears: list[torch.nn.Linear], kernels: bool) -> bool:
    return (kernels and panelable(linears)) or all(map(packable, linears))


def _stacked_linear(linears: list[torch.nn.Linear], kernels: bool) -> PackedLinear | PanelLinear:
    """The stacked product: on the engine's kernel where it is loaded and computes it, else on oneDNN."""
    return PanelLinear.stacked(linears) if kernels and panelable(linears) else PackedLinear.stacked(linears)
