"""Cache reuse (`--cache-reuse`): cached keys turned to new positions equal keys computed there, for plain and
Llama-3.1-scaled RoPE; the runs that moved are found as llama.cpp finds them; a prompt whose oldest messages
were dropped gets the moved runs' cache, exact where context plays no part (the first layer's keys and values)."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from server.engine.forward.runner import ModelRunner
from server.engine.kv.kv_format import layer_tensors
from server.engine.kv.prefix_cache import MovedRun, PrefixCache, moved_runs
from server.engine.kv.rope_shift import rope_frequencies, shifted_keys
from tests.toy import prefill, tiny_llama

LLAMA_31_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@pytest.mark.parametrize("scaling", [None, LLAMA_31_SCALING], ids=["plain", "llama-3.1"])
@pytest.mark.parametrize("shift", [-1000, -37, 5, 12000])
def test_turning_cached_keys_equals_computing_them_at_the_new_position(scaling, shift):
    config = LlamaConfig(
        hidden_size=256, num_attention_heads=2, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling=scaling,
    )  # fmt: skip
    frequencies = LlamaRotaryEmbedding(config).inv_freq  # Llama-3.1's scaling is applied in them
    keys = torch.randn(1, 2, 6, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    old = torch.arange(1200, 1206)

    def at(positions: torch.Tensor) -> torch.Tensor:
        """The keys at `positions` by transformers' own rotation, its angles in float64."""
        angles = positions[:, None].double() * frequencies.double()
        cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
        return apply_rotary_pos_emb(keys, keys, cos[None], sin[None])[1]

    moved = shifted_keys(at(old).float(), shift, frequencies).double()
    torch.testing.assert_close(moved, at(old + shift), atol=1e-5, rtol=1e-5)


def test_moved_runs_after_the_shared_start():
    story, one, two, three, new = [1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33], [40, 41]
    cached = [*story, *one, *two, *three]
    prompt = [*story, *two, *three, *new]  # the oldest message dropped, a new one added
    assert moved_runs(cached, prompt, 3, min_length=4) == [MovedRun(cached=7, prompt=3, length=8)]
    assert moved_runs(cached, prompt, 3, min_length=9) == []  # the run is shorter than asked
    # A token the cache never held stops the search there (llama.cpp's algorithm): the rest is prefilled.
    edited = [*story, *two, 99, *three, *new]
    assert moved_runs(cached, edited, 3, min_length=4) == [MovedRun(7, 3, 4)]
    # The prompt's last token is never reused: its logits start generation.
    assert moved_runs(cached, [*story, *two, *three], 3, min_length=4) == [MovedRun(7, 3, 7)]


def forward_cache(model: torch.nn.Module, tokens: list[int]) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([tokens]), cache=cache, use_cache=True)
    return cache


@torch.inference_mode()
def test_a_trimmed_chat_gets_the_moved_runs_exact_where_context_plays_no_part():
    model = tiny_llama()
    frequencies = rope_frequencies(model)
    story, one, two, three, new = list(range(1, 9)), [20] * 3 + [21], list(range(30, 42)), list(range(50, 60)), [7, 8]
    cached = [*story, *one, *two, *three]
    prefix = PrefixCache(1000, lambda keys, shift: shifted_keys(keys, shift, frequencies))
    prefix.put(tuple(cached), forward_cache(model, cached))
    prompt = [*story, *two, *three, *new]
    cache, shared, moved = prefix.take(prompt, min_run=8)
    assert (shared, moved, cache.get_seq_length()) == (8, 22, 30)
    exact = forward_cache(model, prompt[:30])
    (mine_keys, *_), (mine_values, *_) = layer_tensors(cache)
    (exact_keys, *_), (exact_values, *_) = layer_tensors(exact)
    # The first layer's keys and values depend on each token and its position only.
    torch.testing.assert_close(mine_keys, exact_keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine_values, exact_values, atol=1e-5, rtol=1e-5)
    # Deeper layers saw the dropped message: that is the drift cache reuse trades for speed.
    assert not torch.allclose(layer_tensors(cache)[0][1][:, :, 8:], layer_tensors(exact)[0][1][:, :, 8:], atol=1e-5)
    assert prefix.reusable(prompt, min_run=8) == 30 and prefix.reusable(prompt) == 8


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
@torch.inference_mode()
def test_the_runner_prefills_only_what_the_moved_runs_leave(kv_cache_dtype):
    """With an 8-bit cache the moved keys are decoded, turned and stored again."""
    runner = ModelRunner(tiny_llama(), torch.device("cpu"), prefix_budget_tokens=1000, kv_cache_dtype=kv_cache_dtype)
    tokens = torch.randint(1, 64, (110,), generator=torch.Generator().manual_seed(3)).tolist()
    story, old, kept, new = tokens[:20], tokens[20:40], tokens[40:100], tokens[100:]
    first = [*story, *old, *kept]
    prefill(runner, "first", first)
    runner.release("first", first)
    runner.start_prefill("trimmed", [*story, *kept, *new], cache_reuse=16)
    while (logits := runner.prefill_chunk("trimmed", 512)) is None:
        pass
    assert (runner.reused_tokens, runner.shifted_tokens) == (20, 60)
    assert runner.prefilled_tokens == len(first) + len(new)
    assert bool(torch.isfinite(logits).all())
