"""The grouped CPU decode attention computes what transformers' SDPA attention computes."""

import torch
from transformers import DynamicCache

from server.engine.forward.attention import (
    CAUSAL_PAST,
    NAME,
    additive_sdpa_mask,
    attention_after_past,
    causal_past,
    sdpa_grouped_on_cpu,
    use_engine_attention,
)
from tests.toy import tiny_llama


class _Module(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def test_one_query_token_without_mask_matches_repeated_heads():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 6, 1, 8, generator=generator)
    key, value = torch.randn(2, 2, 9, 8, generator=generator), torch.randn(2, 2, 9, 8, generator=generator)
    output, _ = sdpa_grouped_on_cpu(_Module(), query, key, value, None, scaling=0.3)
    repeated = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1), scale=0.3
    )
    assert output.shape == (2, 1, 6, 8)
    torch.testing.assert_close(output, repeated.transpose(1, 2))


def test_a_masked_call_matches_repeated_heads_exactly():
    """A mask not known to be a chunk's causal one (a copy, as a padded batch's would be): SDPA reads each
    key/value head for its group without copies."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 6, 4, 8, generator=generator)
    key, value = torch.randn(1, 2, 9, 8, generator=generator), torch.randn(1, 2, 9, 8, generator=generator)
    mask = additive_sdpa_mask(batch_size=1, q_length=4, kv_length=9, q_offset=5).clone()
    output, _ = sdpa_grouped_on_cpu(_Module(), query, key, value, mask, scaling=0.3)
    repeated = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1), attn_mask=mask, scale=0.3
    )
    assert output.shape == (1, 4, 6, 8)
    assert torch.equal(output, repeated.transpose(1, 2))


@torch.inference_mode()
def test_the_model_decodes_the_same_logits_with_it():
    model = tiny_llama()
    prompt, token = torch.tensor([list(range(1, 20))]), torch.tensor([[7]])

    def decode_logits() -> torch.Tensor:
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, cache=cache, use_cache=True)
        return model(input_ids=token, cache=cache, use_cache=True).logits

    expected = decode_logits()
    use_engine_attention(model)
    assert model.config._attn_implementation == NAME
    torch.testing.assert_close(decode_logits(), expected)


def test_the_cpu_mask_is_additive_with_the_boolean_ones_pattern():
    """Two new positions after one cached: each sees the cache and itself, the first not the second."""
    mask = additive_sdpa_mask(batch_size=1, q_length=2, kv_length=3, q_offset=1, dtype=torch.bfloat16)
    inf = float("-inf")
    assert mask.dtype == torch.bfloat16
    assert torch.equal(mask, torch.tensor([[[[0.0, 0.0, inf], [0.0, 0.0, 0.0]]]], dtype=torch.bfloat16))
    # A whole prompt with nothing cached needs no mask at all: SDPA runs causal.
    assert additive_sdpa_mask(batch_size=1, q_length=3, kv_length=3) is None


def test_a_chunk_after_its_past_matches_the_masked_attention():
    """37 positions after 70 cached, float32 and bfloat16: the two merged parts are the one masked softmax."""
    generator = torch.Generator().manual_seed(0)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        query = torch.randn(1, 6, 37, 16, generator=generator).to(dtype)
        key = torch.randn(1, 2, 107, 16, generator=generator).to(dtype)
        value = torch.randn(1, 2, 107, 16, generator=generator).to(dtype)
        mask = additive_sdpa_mask(batch_size=1, q_length=37, kv_length=107, q_offset=70, dtype=dtype)
        assert getattr(mask, CAUSAL_PAST) == 70
        expected = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=0.3, enable_gqa=True
        )
        output = attention_after_past(query, key, value, 70, 0.3)
        assert output.dtype == dtype
        torch.testing.assert_close(output, expected, atol=tolerance, rtol=tolerance)
        routed, _ = sdpa_grouped_on_cpu(_Module(), query, key, value, mask, scaling=0.3)
        assert torch.equal(routed, output.transpose(1, 2))


def test_only_a_single_sequences_causal_chunk_mask_counts_as_one():
    causal = torch.ones(3, 5, dtype=torch.bool).tril(2)[None, None]
    assert causal_past(causal) == 2
    padded = causal.clone()
    padded[..., 0] = False  # the sequence's first position is padding
    assert causal_past(padded) is None
    assert causal_past(causal.expand(2, 1, 3, 5)) is None  # two sequences
    assert causal_past(torch.ones(3, 3, dtype=torch.bool).tril()[None, None]) is None  # nothing cached before


@torch.inference_mode()
def test_a_prompt_read_in_chunks_gives_the_whole_prompts_logits():
    model = tiny_llama()
    prompt = torch.randint(1, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    whole = model(input_ids=prompt).logits[0, -1]
    use_engine_attention(model)
    cache = DynamicCache(config=model.config)
    for start in range(0, 40, 7):
        last = model(input_ids=prompt[:, start : start + 7], cache=cache, use_cache=True).logits[0, -1]
    torch.testing.assert_close(last, whole)
