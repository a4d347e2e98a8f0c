"""One KV cache for every running sequence, so a decode step is one batched forward.

Rows have different lengths: each row is left-padded to the common length, and an attention mask marks which
positions are real (1) or padding (0). A row that backs off (banned strings) turns its discarded positions into
masked holes instead of moving data. RoPE positions are tracked per row, so padding and holes never shift them.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache

from server.engine.growing_layer import growing_cache


def _layers(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if layer.keys is not None]


def first_used_column(mask: torch.Tensor) -> int:
    """The first column of a [rows, width] mask that some row uses; the width when none does."""
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if len(used) else mask.shape[1]


def _pad_left(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchCheckpoint(NamedTuple):
    columns: int  # the batch's width (dynamic cache) or its write column (static cache)
    positions: list[int]  # each row's next RoPE position


class RowLayout(ABC):
    """What both batch caches (this one and StaticBatchCache) share: each row's positions in one 2-D mask (1: a real
    position, 0: padding or a hole) and its next RoPE position."""

    _config: object
    mask: torch.Tensor
    rows: Sequence[str | None]
    positions: list[int]

    @abstractmethod
    def _cache_layers(self) -> list:
        """The layers holding keys and values, each [rows, kv heads, width, head dim]."""

    def forget_last(self, row_id: str, count: int) -> None:
        """Masks out a row's last `count` real positions (a back-off), leaving holes the attention skips."""
        index = self.rows.index(row_id)
        real = self.real_columns(index)
        if count > 0:
            self.mask[index, real[-count:]] = 0
            self.positions[index] -= count

    def extract(self, row_id: str) -> DynamicCache:
        """A standalone cache of one row's real positions (for the prefix cache)."""
        index = self.rows.index(row_id)
        real = self.real_columns(index)
        extracted = DynamicCache(config=self._config)
        for layer_index, layer in enumerate(self._cache_layers()):
            extracted.update(
                layer.keys[index : index + 1, :, real], layer.values[index : index + 1, :, real], layer_index
            )
        return extracted

    def real_length(self, row_id: str) -> int:
        return self.positions[self.rows.index(row_id)]

    def real_columns(self, index: int) -> torch.Tensor:
        """The columns holding row `index`'s real positions, in order."""
        return self.mask[index].nonzero().flatten()


class BatchCache(RowLayout):
    def __init__(self, config: object, device: torch.device) -> None:
        self._config = config
        self._device = device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        self.rows: list[str] = []
        self.positions: list[int] = []  # next RoPE position of each row (its count of real tokens)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_ids(self) -> list[str]:
        return list(self.rows)

    def _cache_layers(self) -> list:
        assert self.cache is not None
        return _layers(self.cache)

    @property
    def allocated_tokens(self) -> int:
        """KV positions held in memory: every row at the batch's width, or at its layers' capacity when they
        have grown in place."""
        layers = self._cache_layers() if self.cache else []
        capacity = max((getattr(layer, "capacity", 0) for layer in layers), default=0)
        return self.mask.shape[0] * max(self.mask.shape[1], capacity)

    def join(self, row_id: str, cache: DynamicCache) -> None:
        """Adds a prefilled sequence (its own cache, all positions real) as the last row."""
        length = cache.get_seq_length()
        mask = torch.ones(1, length, dtype=torch.long, device=self._device)
        if self.cache is None:
            # Decode steps then write into free columns instead of copying the whole cache each step.
            self.cache, self.mask = growing_cache(self._config, cache), mask
        else:
            width = max(self.mask.shape[1], length)
            grow, pad = width - self.mask.shape[1], width - length
            for batch_layer, row_layer in zip(_layers(self.cache), _layers(cache), strict=True):
                batch_layer.keys = torch.cat([_pad_left(batch_layer.keys, grow, 2), _pad_left(row_layer.keys, pad, 2)])
                batch_layer.values = torch.cat(
                    [_pad_left(batch_layer.values, grow, 2), _pad_left(row_layer.values, pad, 2)]
                )
            self.mask = torch.cat([_pad_left(self.mask, grow, 1), _pad_left(mask, pad, 1)])
        self.rows.append(row_id)
        self.positions.append(length)

    def duplicate(self, source_id: str, row_id: str) -> None:
        """A second sample of a prompt starts from a copy of its row."""
        index = self.rows.index(source_id)
        assert self.cache is not None
        for layer in _layers(self.cache):
            layer.keys = torch.cat([layer.keys, layer.keys[index : index + 1]])
            layer.values = torch.cat([layer.values, layer.values[index : index + 1]])
        self.mask = torch.cat([self.mask, self.mask[index : index + 1]])
        self.rows.append(row_id)
        self.positions.append(self.positions[index])

    def step_inputs(self, tokens: dict[str, int]) -> dict:
        """Model inputs for one decode step of every row: each row's last token, mask and position."""
        input_ids = torch.tensor([[tokens[row]] for row in self.rows], device=self._device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = torch.tensor(self.positions, device=self._device).unsqueeze(1)
        self.positions = [p + 1 for p in self.positions]
        return {"input_ids": input_ids, "attention_mask": self.mask, "position_ids": positions, "cache": self.cache}

    def checkpoint(self) -> BatchCheckpoint:
        """What `restore` needs to undo a decode step that failed part-way."""
        return BatchCheckpoint(self.mask.shape[1], list(self.positions))

    def restore(self, checkpoint: BatchCheckpoint) -> None:
        """Back to a checkpoint: a forward that raised may have grown some layers and not others."""
        width = checkpoint.columns
        if self.cache is not None:
            for layer in _layers(self.cache):
                layer.keys, layer.values = layer.keys[:, :, :width], layer.values[:, :, :width]
        self.mask, self.positions = self.mask[:, :width], checkpoint.positions

    def remove(self, row_id: str) -> None:
        index = self.rows.index(row_id)
        keep = [i for i in range(len(self.rows)) if i != index]
        del self.rows[index], self.positions[index]
        if not keep:
            self.cache, self.mask = None, self.mask[:0, :0]
            return
        assert self.cache is not None
        kept = torch.tensor(keep, device=self._device)
        mask = self.mask.index_select(0, kept)
        # Columns that no remaining row uses any more (its own padding and holes) are dropped from the front.
        start = first_used_column(mask)
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, kept)[:, :, start:]
            layer.values = layer.values.index_select(0, kept)[:, :, start:]
        self.mask = mask[:, start:]


def order_of(rows: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Where each of `wanted` sits among `rows`."""
    where = {row: index for index, row in enumerate(rows)}
    return [where[row] for row in wanted]
