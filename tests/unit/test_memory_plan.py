"""The start-up memory plan: how many chats the KV budget holds, counted as admission counts them."""

import torch

from server.engine.kv.bucket_cache import BucketCache
from server.engine.kv.kv_format import KvFormat
from server.engine.memory_plan import MemoryPlan, chats_that_fit
from tests.toy import tiny_llama


def footprint_8k() -> BucketCache:
    return BucketCache(tiny_llama().config, torch.device("cpu"), KvFormat("auto", torch.float32), 8192)


def test_chats_are_counted_with_their_buckets_padding():
    """A chat of the whole context takes an 8,193-wide slot, and a bucket's slots come in 8 then 12: 100,000
    tokens hold 12 of them, 98,000 only 8."""
    footprint = footprint_8k().footprint
    assert chats_that_fit(footprint, 100_000, 8192) == 12
    assert chats_that_fit(footprint, 98_000, 8192) == 8
    assert chats_that_fit(footprint, 8_000, 8192) == 0


def test_the_summary_names_weights_kv_bytes_and_chats():
    plan = MemoryPlan(5_800_000_000, "int4", "int8", 66_048, 6 * 2**30, 97_541, 8192, 8)
    assert plan.summary() == (
        "weights 5.80 GB (int4); KV cache (int8) 6,144 MiB at 66,048 bytes a token: 97,541 tokens, "
        "8 chats of 8,192 tokens at once"
    )
