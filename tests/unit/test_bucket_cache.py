"""The width buckets: where a row lives, what a batch holds, and that the KV held follows the real lengths."""

import pytest
import torch
from transformers import DynamicCache

from server.engine.bucket_cache import BucketCache, bucket_widths, width_for
from tests.toy import tiny_llama


def test_widths_grow_by_about_the_square_root_of_two_up_to_the_context():
    assert bucket_widths(8192)[:8] == [256, 384, 576, 832, 1216, 1728, 2496, 3584]
    assert bucket_widths(8192)[-1] == 8193
    assert bucket_widths(100) == [101]


def test_a_row_goes_to_the_narrowest_bucket_holding_it_and_the_next_token():
    widths = bucket_widths(8192)
    assert (width_for(256, widths), width_for(257, widths), width_for(9000, widths)) == (256, 384, 8193)


def test_eight_roleplay_chats_hold_at_most_1_3_times_their_real_kv():
    """The roofline's mixed scenario on Llama-3.1-8B's context: 37,000 real tokens."""
    lengths = [500, 1000, 2000, 3000, 4500, 6000, 8000, 12000]
    widths = bucket_widths(131072)
    held = sum(width_for(length + 1, widths) for length in lengths)
    # 576 + 1,216 + 2,496 + 3,584 + 5,120 + 7,296 + 10,368 + 14,720 positions.
    assert held == 45376 and held / sum(lengths) < 1.3


def row(length: int, seed: int) -> DynamicCache:
    config = tiny_llama().config
    cache = DynamicCache(config=config)
    generator = torch.Generator().manual_seed(seed)
    shape = (1, config.num_key_value_heads, length, config.head_dim)
    for layer in range(config.num_hidden_layers):
        cache.update(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator), layer)
    return cache


def test_rows_join_extract_and_leave_exactly():
    config = tiny_llama().config
    cache = BucketCache(config, torch.device("cpu"), torch.float32, context_length=500)
    first, second = row(40, 1), row(300, 2)
    cache.join("a", first)
    cache.join("b", second)
    cache.duplicate("b", "c")
    assert cache.rows == ["a", "b", "c"] and cache.allocated_tokens == 256 + 2 * 384
    assert cache.footprint([40, 300, 300]) == cache.allocated_tokens
    for row_id, source in (("a", first), ("c", second)):
        extracted = cache.extract(row_id)
        for mine, theirs in zip(extracted.layers, source.layers, strict=True):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    cache.forget_last("c", 10)
    assert cache.real_length("c") == 290
    cache.remove("b")
    assert cache.rows == ["a", "c"] and cache.allocated_tokens == 256 + 384
    with pytest.raises(KeyError):
        cache.real_length("b")


def test_a_failed_step_is_undone():
    config = tiny_llama().config
    cache = BucketCache(config, torch.device("cpu"), torch.float32, context_length=500)
    cache.join("a", row(255, 1))  # full after the next step: it moves up then
    before = cache.checkpoint()
    inputs = cache.step_inputs({"a": 7})
    assert inputs["position_ids"].tolist() == [[255]] and cache.real_length("a") == 256
    cache.restore(before)
    assert cache.real_length("a") == 255
    cache.step_inputs({"a": 7})
    cache.step_inputs({"a": 7})  # 256 positions: the row moved up to the next bucket
    assert cache.allocated_tokens == 384 and cache.real_length("a") == 257
