"""bench/roofline.py's arithmetic on a tiny configuration, against values worked out by hand, and its launch
counts' structure (a fixed cost per layer)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.roofline import (
    CAPTURED_RUN_LAUNCHES,
    LAUNCH_SECONDS,
    count_step,
    kv_step_bytes,
    kv_token_bytes,
    narrow,
    predicted_row,
    weight_bytes,
)
from bench.weight_bytes import layer_bytes

TINY = {
    "vocab_size": 10,
    "hidden_size": 4,
    "intermediate_size": 6,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 64,
}


def test_weights_and_kv_bytes_by_hand():
    # Per layer: q and o 4x4 each, k and v 4x2 each, three 4x6 MLP matrices, two norms of 4 = 128 values;
    # two layers, the final norm (4) and the output matrix (10x4), not the embedding: 300 values in bf16.
    assert weight_bytes(TINY) == 600
    # Keys and values, 2 layers, 1 head of 2 dimensions, bf16.
    assert kv_token_bytes(TINY) == 16


def test_8_bit_kv_bytes_by_hand():
    # Per layer and head one code per dimension and an exponent byte, keys and values: 2 * 2 * (2 + 1) = 12; a
    # step moves those and writes and reads the bf16 copy attention decodes them into (2 * 16).
    assert kv_token_bytes(TINY, "int8") == kv_token_bytes(TINY, "fp8") == 12
    assert (kv_step_bytes(TINY, "auto"), kv_step_bytes(TINY, "int8")) == (16, 12 + 2 * 16)


@pytest.mark.parametrize("quantization", ["none", "int8", "int4", "fp8"])
def test_the_weight_formula_counts_what_the_quantized_layers_hold(quantization):
    """One real decoder layer, quantized as the server does it, against the formula's per-layer share."""
    config = {**TINY, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}
    one_layer = {**config, "num_hidden_layers": 1}
    outside = weight_bytes({**config, "num_hidden_layers": 0}, quantization)  # final norm and LM head
    assert weight_bytes(one_layer, quantization) - outside == layer_bytes(LlamaConfig(**one_layer), quantization)


def test_predicted_step_by_hand():
    # A context of 64 makes one bucket of 65 positions; two rows take a capacity of 2 slots: 130 columns held.
    # Eager, they read up to the longer row (5) plus the column the step writes: 12 columns read.
    eager = predicted_row("t", "eager", [3, 5], launches=100, sampling=10, config=TINY)
    assert (eager.kv_read_bytes, eager.kv_allocated_bytes, eager.real_kv_bytes) == (12 * 16, 130 * 16, 8 * 16)
    assert eager.launches_outside_graph == 110
    assert eager.predicted_ms == pytest.approx(((600 + 192) / 3e12 + 110 * LAUNCH_SECONDS) * 1000)
    assert eager.ceiling_ms == pytest.approx((600 + 128) / 3e12 * 1000)
    # Captured, every slot reads the whole width; five rows take a capacity of 6.
    captured = predicted_row("t", "captured", [3, 5], launches=5, sampling=10, config=TINY)
    assert (captured.kv_read_bytes, captured.kv_allocated_bytes) == (130 * 16, 130 * 16)
    five = predicted_row("t", "captured", [1, 2, 3, 4, 5], launches=5, sampling=10, config=TINY)
    assert (five.kv_read_bytes, five.kv_allocated_bytes) == (6 * 65 * 16, 6 * 65 * 16)
    # With Llama-3.1-8B's context the rows of 300, 1,000 and 1,100 tokens sit in buckets of 384 and 1,216.
    wide = {**TINY, "max_position_embeddings": 131072}
    eager = predicted_row("t", "eager", [300, 1000, 1100], launches=0, sampling=0, config=wide)
    assert (eager.kv_read_bytes, eager.kv_allocated_bytes) == ((301 + 2 * 1101) * 16, (384 + 2 * 1216) * 16)
    captured = predicted_row("t", "captured", [300, 1000, 1100], launches=0, sampling=0, config=wide)
    assert captured.kv_read_bytes == captured.kv_allocated_bytes == (384 + 2 * 1216) * 16


def tiny_model(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(narrow({**TINY, "num_attention_heads": 4, "num_key_value_heads": 2}, layers)).eval()


def test_eager_launches_grow_by_a_fixed_count_per_layer():
    counts = [count_step(tiny_model(layers), [5, 9], captured=False) for layers in (2, 3, 4)]
    assert counts[1] - counts[0] == counts[2] - counts[1] > 0


@pytest.mark.parametrize("layers", [2, 4])
def test_a_captured_step_launches_the_same_few_operations_at_any_depth(layers):
    # Outside the graph: the step's [2, rows] input tensor made, its copy into the graph's input and the replay,
    # the tensor of where each request's row sits and the selection of those rows from the graph's logits.
    assert count_step(tiny_model(layers), [5, 9, 40], captured=True) == 1 + CAPTURED_RUN_LAUNCHES + 2
