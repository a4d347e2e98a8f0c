"""The width buckets: where a row lives, what a batch holds, and that the KV held follows the real lengths."""

import pytest
import torch
from transformers import DynamicCache

from server.engine.kv.bucket_cache import BucketCache, bucket_widths, capacity_for, width_for
from server.engine.kv.kv_format import KvFormat
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
    cache = BucketCache(config, torch.device("cpu"), KvFormat("auto", torch.float32), context_length=500)
    first, second = row(40, 1), row(300, 2)
    cache.join("a", first)
    cache.join("b", second)
    cache.duplicate("b", "c")
    assert cache.rows == ["a", "b", "c"] and cache.allocated_tokens == 256 + 2 * 384
    assert cache.footprint([40, 300, 300]) == cache.allocated_tokens
    assert cache.footprint([40, 300, 300, 300]) == 256 + 3 * 384 and cache.footprint([1] * 5) == 6 * 256
    for sample_id, source in (("a", first), ("c", second)):
        extracted = cache.extract(sample_id)
        for mine, theirs in zip(extracted.layers, source.layers, strict=True):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    cache.truncate("c", 290)
    assert cache.real_length("c") == 290
    cache.remove("b")
    cache.advance({"a": 0, "c": 0}, padded=False)
    assert cache.rows == ["a", "c"] and cache.allocated_tokens == 256 + 384
    with pytest.raises(KeyError):
        cache.real_length("b")


def test_a_failed_step_is_undone():
    config = tiny_llama().config
    cache = BucketCache(config, torch.device("cpu"), KvFormat("auto", torch.float32), context_length=500)
    cache.join("a", row(255, 1))  # full after the next step: it moves up then
    before = cache.checkpoint()
    batch = cache.advance({"a": 7}, padded=False)
    assert batch.inputs.tolist() == [[7], [255]] and cache.real_length("a") == 256
    cache.restore(before)
    assert cache.real_length("a") == 255
    cache.advance({"a": 7}, padded=False)
    cache.advance({"a": 7}, padded=False)  # 256 positions: the row moved up to the next bucket
    assert cache.allocated_tokens == 384 and cache.real_length("a") == 257


def test_capacities_step_by_about_the_square_root_of_two():
    assert [capacity_for(rows) for rows in range(14)] == [0, 1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]
    assert (capacity_for(17), capacity_for(25), capacity_for(33), capacity_for(49)) == (24, 32, 48, 64)


def test_a_bucket_grows_and_shrinks_by_capacity_steps_and_a_leaving_row_makes_room_for_the_last():
    config = tiny_llama().config
    cache = BucketCache(config, torch.device("cpu"), KvFormat("auto", torch.float32), context_length=500)
    rows = {name: row(10 + i, i) for i, name in enumerate("abcde")}
    generations = []
    for name, source in rows.items():
        cache.join(name, source)
        generations.append(cache.advance({n: 0 for n in cache.rows}, padded=True).shape)
    # Five rows in the first bucket: capacities 1, 2, 3, 4, 6, a new allocation (generation) each time.
    assert [shape[0][:2] for shape in generations] == [(256, 1), (256, 2), (256, 3), (256, 4), (256, 6)]
    assert len({shape[0][2] for shape in generations}) == 5
    cache.remove("b")
    assert cache.rows == ["a", "e", "c", "d"] and cache.allocated_tokens == 6 * 256  # until the next step
    cache.advance({n: 0 for n in cache.rows}, padded=True)
    assert cache.allocated_tokens == 4 * 256
    for name in "acd":
        extracted = cache.extract(name)
        for mine, theirs in zip(extracted.layers, rows[name].layers, strict=True):
            assert torch.equal(mine.keys[:, :, : theirs.keys.shape[2]], theirs.keys)
    cache.remove("a")
    cache.advance({n: 0 for n in cache.rows}, padded=True)
    assert cache.rows == ["d", "e", "c"] and cache.allocated_tokens == 3 * 256
    for name in "dec":
        cache.remove(name)
    assert cache.allocated_tokens == 0  # an emptied bucket lets go at once


def test_a_padded_batch_feeds_every_slot_and_an_eager_one_only_the_rows():
    config = tiny_llama().config
    cache = BucketCache(config, torch.device("cpu"), KvFormat("auto", torch.float32), context_length=500)
    lengths = {"a": 10, "b": 20, "c": 30, "d": 40, "e": 50, "long": 300}
    for name, length in lengths.items():
        cache.join(name, row(length, length))
    tokens = {name: i + 1 for i, name in enumerate(lengths)}
    before = cache.checkpoint()
    padded = cache.advance(tokens, padded=True)
    assert padded.inputs.tolist() == [[1, 2, 3, 4, 5, 0, 6], [10, 20, 30, 40, 50, 0, 300]]
    assert padded.row_of == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "long": 6}
    assert [(step.start, step.rows, step.span) for step in padded.buckets] == [(0, 6, 256), (6, 1, 384)]
    cache.restore(before)
    eager = cache.advance(tokens, padded=False)
    assert eager.inputs.tolist() == [[1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 300]]
    assert [(step.start, step.rows, step.span) for step in eager.buckets] == [(0, 5, 51), (5, 1, 301)]
