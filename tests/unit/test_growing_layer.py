"""The in-place growing KV layer holds exactly what transformers' concatenating layer holds, and copies only when
its buffer is full or its tensors were replaced."""

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from server.engine import growing_layer
from server.engine.growing_layer import GrowingLayer, growing_cache
from tests.toy import tiny_llama


def _step(seed: int, tokens: int = 1, rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3, tokens, 4, generator=generator), torch.randn(rows, 3, tokens, 4, generator=generator)


def test_holds_what_concatenation_holds_across_reallocations(monkeypatch):
    monkeypatch.setattr(growing_layer, "HEADROOM_TOKENS", 3)
    growing, reference = GrowingLayer(), DynamicLayer()
    for seed, tokens in enumerate([5, 1, 1, 1, 1, 2, 1, 7, 1]):
        keys, values = growing.update(*_step(seed, tokens))
        expected_keys, expected_values = reference.update(*_step(seed, tokens))
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    assert growing.get_seq_length() == 20


def test_writes_in_place_until_the_buffer_is_full(monkeypatch):
    monkeypatch.setattr(growing_layer, "HEADROOM_TOKENS", 3)
    layer = GrowingLayer()
    layer.update(*_step(0, 4))
    address = layer.keys.data_ptr()
    assert layer.capacity == 7
    for seed in range(1, 4):
        layer.update(*_step(seed))
        assert layer.keys.data_ptr() == address
    layer.update(*_step(4))  # the eighth position does not fit: one re-allocation
    assert layer.keys.data_ptr() != address and layer.capacity == 11


def test_replaced_tensors_are_copied_into_a_new_buffer():
    layer = GrowingLayer()
    layer.update(*_step(0, 4))
    # What the batch cache does when a row leaves: new tensors, not views of the buffer.
    layer.keys, layer.values = layer.keys[1:].clone(), layer.values[1:].clone()
    kept_keys = layer.keys.clone()
    keys, _ = layer.update(*_step(1, rows=1))
    assert keys.shape == (1, 3, 5, 4)
    assert torch.equal(keys[:, :, :4], kept_keys)


def test_rolling_back_by_slicing_keeps_writing_in_place():
    layer = GrowingLayer()
    layer.update(*_step(0, 4))
    address = layer.keys.data_ptr()
    layer.update(*_step(1))
    layer.keys, layer.values = layer.keys[:, :, :4], layer.values[:, :, :4]  # a failed step undone
    keys, _ = layer.update(*_step(2))
    assert keys.data_ptr() == address
    assert torch.equal(keys[:, :, 4], _step(2)[0][:, :, 0])


def test_growing_cache_takes_over_a_prefilled_cache():
    model = tiny_llama()
    source = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3]]), cache=source, use_cache=True)
    cache = growing_cache(model.config, source)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert cache.get_seq_length() == 3
    assert all(
        new.keys is old.keys and new.values is old.values for new, old in zip(cache.layers, source.layers, strict=True)
    )
