"""`--static-cache`: the batch cache in pre-allocated buffers, so that a decode step has the same shapes and
addresses every time and can be captured once (CUDA graphs, through torch.compile) and replayed.

Rows are right-aligned at one shared write column, left padding and back-off holes masked, RoPE positions per
row, in transformers' StaticCache: keys and values of shape
[slots, kv heads, width, head dim] per layer, a 2-D mask [slots, width]. A decode step runs every slot; free slots
are fully masked and their logits ignored. A prompt longer than the write column shifts every row to the right; a
full buffer is compacted by dropping the columns no row uses, after closing the rows' back-off holes when every
column is in use.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache, StaticCache


def _layers(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if layer.keys is not None]


def first_used_column(mask: torch.Tensor) -> int:
    """The first column of a [rows, width] mask that some row uses; the width when none does."""
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if len(used) else mask.shape[1]


class StaticCheckpoint(NamedTuple):
    column: int  # the write column
    positions: list[int]  # each row's next RoPE position


class _RowLayout:
    """Each row's positions in one 2-D mask (1: a real position, 0: padding or a hole) and its next RoPE
    position."""

    _config: object
    mask: torch.Tensor
    rows: Sequence[str | None]
    positions: list[int]

    def _cache_layers(self) -> list:
        """The layers holding keys and values, each [rows, kv heads, width, head dim]."""
        raise NotImplementedError

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


class StaticBatchCache(_RowLayout):
    def __init__(self, config: object, device: torch.device, dtype: torch.dtype, *, slots: int, width: int) -> None:
        self._config = config
        self._device = device
        self.width = width
        self.cache = StaticCache(config=config, max_cache_len=width)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (slots, heads, 1, head_dim)
        for layer in self.cache.layers:
            layer.lazy_initialization(
                torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device)
            )
        self.mask = torch.zeros(slots, width, dtype=torch.long, device=device)
        self.rows: list[str | None] = [None] * slots  # the sequence in each slot
        self.positions: list[int] = [0] * slots
        self.column = 0  # where the next decode step writes, for every row
        # Inputs of a decode step, kept at fixed addresses for a captured step.
        self.input_ids = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return sum(row is not None for row in self.rows)

    @property
    def row_ids(self) -> list[str]:
        return [row for row in self.rows if row is not None]

    @property
    def allocated_tokens(self) -> int:
        return self.mask.numel()

    def _cache_layers(self) -> list:
        return self.cache.layers

    def footprint(self, reservations: list[int]) -> int:
        """KV positions rows of these reservations hold: a whole slot each."""
        return len(reservations) * self.width

    @property
    def room(self) -> int:
        """Tokens the longest row may still hold."""
        return self.width - 1

    def join(self, row_id: str, cache: DynamicCache) -> None:
        """Copies a prefilled sequence into a free slot, ending at the write column."""
        length = cache.get_seq_length()
        if length > self.room:
            raise ValueError(f"a prompt of {length} tokens does not fit a static cache of {self.width} positions")
        slot = self.rows.index(None)
        if length > self.column:
            self._shift(length - self.column)
        start = self.column - length
        for batch_layer, row_layer in zip(self.cache.layers, _layers(cache), strict=True):
            batch_layer.keys[slot, :, start : self.column] = row_layer.keys[0]
            batch_layer.values[slot, :, start : self.column] = row_layer.values[0]
        self.mask[slot] = 0
        self.mask[slot, start : self.column] = 1
        self.rows[slot], self.positions[slot] = row_id, length

    def duplicate(self, source_id: str, row_id: str) -> None:
        source, slot = self.rows.index(source_id), self.rows.index(None)
        for layer in self.cache.layers:
            layer.keys[slot].copy_(layer.keys[source])
            layer.values[slot].copy_(layer.values[source])
        self.mask[slot] = self.mask[source]
        self.rows[slot], self.positions[slot] = row_id, self.positions[source]

    def step_inputs(self, tokens: dict[str, int]) -> dict:
        """Inputs of one decode step of every slot, written into the fixed input buffers."""
        if self.column >= self.width:
            self._compact()
        self.input_ids.copy_(torch.tensor([[tokens.get(row, 0) if row else 0] for row in self.rows]))
        self.position_ids.copy_(torch.tensor(self.positions).unsqueeze(1))
        self.cache_position.fill_(self.column)
        used = torch.tensor([row is not None for row in self.rows], dtype=torch.long, device=self._device)
        self.mask[:, self.column] = used
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.column)
        self.column += 1
        self.positions = [p + 1 if row else p for p, row in zip(self.positions, self.rows, strict=True)]
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.mask,
            "position_ids": self.position_ids,
            "cache_position": self.cache_position,
            "cache": self.cache,
        }

    def checkpoint(self) -> StaticCheckpoint:
        return StaticCheckpoint(self.column, list(self.positions))

    def restore(self, checkpoint: StaticCheckpoint) -> None:
        """Back to a checkpoint: the failed step's column is masked again (its stale values are then ignored)."""
        self.column, self.positions = checkpoint.column, checkpoint.positions
        if self.column < self.width:
            self.mask[:, self.column] = 0

    def remove(self, row_id: str) -> None:
        slot = self.rows.index(row_id)
        self.rows[slot], self.positions[slot] = None, 0
        self.mask[slot] = 0
        if not self.row_ids:
            self.column = 0

    def _shift(self, amount: int) -> None:
        """Moves every row `amount` columns to the right (a longer prompt joins; `join` checked that it fits)."""
        end = self.column
        for layer in self.cache.layers:
            layer.keys[:, :, amount : end + amount] = layer.keys[:, :, :end].clone()
            layer.values[:, :, amount : end + amount] = layer.values[:, :, :end].clone()
        self.mask[:, amount : end + amount] = self.mask[:, :end].clone()
        self.mask[:, :amount] = 0
        self.column += amount

    def _compact(self) -> None:
        """Drops the leading columns that no row uses, moving everything left. When every column is used by some
        row, the rows' back-off holes are closed first."""
        start = first_used_column(self.mask[:, : self.column])
        if start == 0:
            self._close_holes()
            start = first_used_column(self.mask[:, : self.column])
        if start == 0:
            raise RuntimeError("the static cache is full: a row reached its width")
        kept = self.column - start
        for layer in self.cache.layers:
            layer.keys[:, :, :kept] = layer.keys[:, :, start : self.column].clone()
            layer.values[:, :, :kept] = layer.values[:, :, start : self.column].clone()
        self.mask[:, :kept] = self.mask[:, start : self.column].clone()
        self.mask[:, kept:] = 0
        self.column = kept

    def _close_holes(self) -> None:
        """Moves each row's real positions together, ending at the write column. Attention does not depend on
        where a position sits in the buffer: its RoPE position is in its key already."""
        for slot in range(len(self.rows)):
            real = self.real_columns(slot)  # none at or past the write column
            start = self.column - len(real)
            if len(real) == 0 or int(real[0]) == start:
                continue  # no holes: the row already ends at the write column, in one piece
            for layer in self.cache.layers:
                layer.keys[slot, :, start : self.column] = layer.keys[slot, :, real]
                layer.values[slot, :, start : self.column] = layer.values[slot, :, real]
            self.mask[slot] = 0
            self.mask[slot, start : self.column] = 1
