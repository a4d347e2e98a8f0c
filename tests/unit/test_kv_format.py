"""The 8-bit KV cache's storage: exact codes and scales, reading back what was stored whatever the path (prefill,
batch cache, prefix cache), its bytes, and a decode step over it that a CUDA graph could capture."""

import pytest
import torch
from transformers import LlamaConfig

from server.engine.forward.runner import ModelRunner
from server.engine.forward.self_check import captured_decode_problem
from server.engine.kv.bucket_cache import BucketCache
from server.engine.kv.kv_format import KvFormat
from tests.capturable import NoHostSync, padded_decode_logits
from tests.toy import tiny_llama

VECTOR = torch.tensor([[1.0, -0.5, 0.3, 3.0]])


def test_int8_stores_codes_and_a_power_of_two_exponent():
    """amax 3 over 127 rounds up to the scale 2^-5: codes are the values times 32, the ninth byte -5."""
    kv_format = KvFormat("int8", torch.float32)
    stored = kv_format.encode(VECTOR)
    assert stored.dtype == torch.uint8 and stored.tolist() == [[32, 240, 10, 96, 251]]
    assert kv_format.decode(stored).tolist() == [[1.0, -0.5, 0.3125, 3.0]]


def test_fp8_stores_e4m3_codes_and_a_power_of_two_exponent():
    """amax 3 over 448 rounds up to 2^-7: the values times 128 in e4m3 (0.3 * 128 = 38.4 becomes 40)."""
    kv_format = KvFormat("fp8", torch.float32)
    stored = kv_format.encode(VECTOR)
    assert stored.tolist() == [[112, 232, 98, 124, 249]]
    assert kv_format.decode(stored).tolist() == [[1.0, -0.5, 0.3125, 3.0]]


def test_auto_stores_the_tensor_as_it_is():
    kv_format = KvFormat("auto", torch.float32)
    assert kv_format.encode(VECTOR) is VECTOR and kv_format.decode(VECTOR) is VECTOR


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_what_was_read_back_is_stored_again_unchanged_and_close(kind, dtype):
    generator = torch.Generator().manual_seed(0)
    vectors = (torch.randn(3, 2, 40, 64, generator=generator) * torch.rand(3, 2, 40, 1, generator=generator) * 20).to(
        dtype
    )
    vectors[0, 0, 0] = 0
    kv_format = KvFormat(kind, dtype)
    once = kv_format.round_trip(vectors)
    assert torch.equal(kv_format.round_trip(once), once)
    assert once[0, 0, 0].abs().max() == 0
    amax = vectors.float().abs().amax(-1, keepdim=True)
    error = (once.float() - vectors.float()).abs()
    # int8: half a code of a scale below amax / 63.5; e4m3: 3 mantissa bits (1/16 relative), above its subnormals.
    bound = amax / 127 if kind == "int8" else torch.maximum(vectors.float().abs() / 16, amax / 448 * 2**-6)
    assert bool((error <= bound * 1.0001).all())


def test_bytes_per_token_of_llama_3_1_8b():
    """32 layers, 8 key/value heads of 128: bfloat16 takes 128 KiB a token, 8 bits plus one exponent byte per
    head and token 129/256 of it."""
    config = LlamaConfig(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096)
    assert KvFormat("auto", torch.bfloat16).bytes_per_token(config) == 131_072
    assert KvFormat("int8", torch.bfloat16).bytes_per_token(config) == 66_048
    assert KvFormat("fp8", torch.bfloat16).bytes_per_token(config) == 66_048
    assert KvFormat("auto", torch.float32).bytes_per_token(config) == 262_144


@torch.inference_mode()
def test_a_prefilled_row_reads_back_exactly_from_the_batch_and_the_prefix_cache():
    model = tiny_llama()
    kv_format = KvFormat("int8", model.dtype)
    prefill = kv_format.new_cache(model.config)
    model(input_ids=torch.tensor([[3, 4, 5, 6, 7]]), cache=prefill, use_cache=True)
    batch = BucketCache(model.config, torch.device("cpu"), kv_format, context_length=64)
    batch.join("row", prefill)
    stored = batch.extract("row")
    assert stored.layers[0].keys.dtype == torch.uint8 and stored.layers[0].keys.shape[-1] == model.config.head_dim + 1
    restored = kv_format.decoded_cache(stored, model.config)
    for original, back in zip(prefill.layers, restored.layers, strict=True):
        assert torch.equal(original.keys, back.keys) and torch.equal(original.values, back.values)


@torch.inference_mode()
def test_a_swipe_from_the_prefix_cache_gives_the_cold_prompts_logits_exactly():
    """Per-token scales: the cache does not depend on where it came from, so seeded output repeats. The cold
    prompt is read in chunks of 3, 3, 1 and 1, so that its last token is computed as the swipe computes it (alone
    over the cache before it): what differs then is only where that cache came from."""
    runner = ModelRunner(tiny_llama(), torch.device("cpu"), prefix_budget_tokens=1_000, kv_cache_dtype="int8")
    prompt = [3, 9, 4, 12, 5, 30, 6, 7]
    runner.start_prefill("cold", prompt)
    for budget in (3, 3, 1):
        assert runner.prefill_chunk("cold", budget) is None
    cold = runner.prefill_chunk("cold", 1)
    runner.release("cold", prompt)
    runner.start_prefill("swipe", prompt)
    assert runner.prefill_remaining("swipe") == 1
    assert torch.equal(runner.prefill_chunk("swipe", 3), cold)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.inference_mode()
def test_a_padded_decode_step_over_the_8_bit_cache_stays_capturable_and_close(kind, dtype):
    model = tiny_llama().to(dtype)
    with NoHostSync():
        logits = padded_decode_logits(model, kind)
    reference = padded_decode_logits(model)
    assert logits.shape == (2, 64)
    assert torch.allclose(logits.float(), reference.float(), atol=0.05 if kind == "int8" else 0.2)


@torch.inference_mode()
def test_the_captured_decode_self_check_passes_over_an_8_bit_cache():
    model = tiny_llama()
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, captured=True, kv_cache_dtype="int8")
    assert captured_decode_problem(runner, model.config.vocab_size, model.dtype, context=256) is None
