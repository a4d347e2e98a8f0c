"""A KV-cache layer that grows in place, for the shared batch cache.

transformers' DynamicLayer appends each decode step's keys and values with `torch.cat`, which copies the whole
layer every step: at 8 rows of a 2,000-token chat that copy moves more bytes than the weights themselves. This
layer keeps its keys and values as views of a larger buffer and writes each step into the free columns; the
buffer is re-allocated (one copy) only when it is full, or when the batch cache has replaced the tensors (a row
joined, left or was copied), which the layer notices because they are no longer views of its buffer.
"""

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Free columns allocated beyond what a re-allocation needs: one copy of the layer per this many decode steps.
HEADROOM_TOKENS = 128


class GrowingLayer(DynamicLayer):
    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        if not self._views_buffers() or needed > self._key_buffer.shape[-2]:
            self._reallocate(length, needed + HEADROOM_TOKENS, key_states, value_states)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[:, :, length:needed] = key_states
        self._value_buffer[:, :, length:needed] = value_states
        self.keys = self._key_buffer[:, :, :needed]
        self.values = self._value_buffer[:, :, :needed]
        return self.keys, self.values

    @property
    def capacity(self) -> int:
        """Positions the layer holds memory for."""
        return self._key_buffer.shape[-2] if self._views_buffers() else self.get_seq_length()

    def _views_buffers(self) -> bool:
        """Whether keys and values are still the leading columns of this layer's buffers."""
        return _leading_columns(self.keys, self._key_buffer) and _leading_columns(self.values, self._value_buffer)

    def _reallocate(self, length: int, capacity: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        buffers = []
        for old, new in ((self.keys, key_states), (self.values, value_states)):
            shape = (*new.shape[:2], capacity, new.shape[-1])
            buffer = new.new_empty(shape)
            if length:
                buffer[:, :, :length] = old
            buffers.append(buffer)
        self._key_buffer, self._value_buffer = buffers


def _leading_columns(tensor: torch.Tensor | None, buffer: torch.Tensor | None) -> bool:
    return (
        tensor is not None
        and buffer is not None
        and tensor.dim() == 4
        and tensor.data_ptr() == buffer.data_ptr()
        and tensor.shape[:2] == buffer.shape[:2]
        and tensor.stride() == buffer.stride()
    )


def growing_cache(config: object, source: DynamicCache) -> DynamicCache:
    """A cache of growing layers holding `source`'s keys and values (taken over, not copied)."""
    cache = DynamicCache(config=config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return source  # sliding-window or other layer kinds keep their own update rules
    cache.layers = [GrowingLayer() for _ in cache.layers]
    for layer, held in zip(cache.layers, source.layers, strict=True):
        if held.is_initialized:
            layer.lazy_initialization(held.keys, held.values)
            layer.keys, layer.values = held.keys, held.values
    return cache
