"""bench/roofline.py's arithmetic on a tiny configuration, against values worked out by hand, and its launch
counts' structure (a fixed cost per layer)."""

import pytest
import torch
from transformers import LlamaForCausalLM

from bench.roofline import LAUNCH_SECONDS, count_step, kv_token_bytes, narrow, predicted_row, weight_bytes

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


def test_predicted_step_by_hand():
    # A context of 64 makes one bucket of 65 positions: both rows hold 65 columns, and read up to the longer row
    # (5) plus the column the step writes: 12 columns read.
    buckets = predicted_row("t", "buckets", [3, 5], launches=100, sampling=10, config=TINY, width=None)
    assert (buckets.kv_read_bytes, buckets.kv_allocated_bytes, buckets.real_kv_bytes) == (12 * 16, 130 * 16, 8 * 16)
    assert buckets.launches_outside_graph == 110
    assert buckets.predicted_ms == pytest.approx(((600 + 192) / 3e12 + 110 * LAUNCH_SECONDS) * 1000)
    assert buckets.ceiling_ms == pytest.approx((600 + 128) / 3e12 * 1000)
    # With Llama-3.1-8B's context the two rows of 300 and 1,000 tokens sit in buckets of 384 and 1,216.
    wide = predicted_row(
        "t",
        "buckets",
        [300, 1000],
        launches=0,
        sampling=0,
        config={**TINY, "max_position_embeddings": 131072},
        width=None,
    )
    assert (wide.kv_read_bytes, wide.kv_allocated_bytes) == ((301 + 1001) * 16, (384 + 1216) * 16)
    static = predicted_row("t", "static", [3, 5], launches=20, sampling=10, config=TINY, width=40)
    assert (static.kv_read_bytes, static.kv_allocated_bytes) == (2 * 40 * 16, 2 * 40 * 16)


def test_launches_grow_by_a_fixed_count_per_layer():
    counts = []
    for layers in (2, 3, 4):
        torch.manual_seed(0)
        model = LlamaForCausalLM(narrow({**TINY, "num_attention_heads": 4, "num_key_value_heads": 2}, layers)).eval()
        counts.append(count_step(model, [5, 9], static=None))
    assert counts[1] - counts[0] == counts[2] - counts[1] > 0
