"""The running requests' KV cache in width buckets, sized to each chat's real length.

Every row lives in the narrowest bucket that holds its tokens and the one the next step writes; buckets grow by
about sqrt(2), so a row's memory is at most ~1.4x its real KV (left-padding to the longest chat, as one shared
tensor does, holds 2.6x for eight roleplay chats of 500 to 12,000 tokens: bench/RESULTS.md). A row that fills its
bucket moves up to the next one. Rows are left-aligned: a row's positions are columns 0..length-1, its RoPE
position is its length, and backing off (banned strings) is shortening it. A decode step is still one forward over
every row: this object is the forward's cache (`update` writes each row's new key and value at its length) and
tells the attention (server/engine/attention.py) which rows form each bucket, so that each bucket's rows attend
to their own keys, up to the bucket's longest row.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import DynamicCache

# The narrowest bucket, in tokens; each next one is about sqrt(2) wider, rounded to this multiple.
FIRST_WIDTH = 256
WIDTH_MULTIPLE = 64


def bucket_widths(context_length: int) -> list[int]:
    """The buckets' widths up to one holding the whole context and the next token."""
    widths = [min(FIRST_WIDTH, context_length + 1)]
    while widths[-1] < context_length + 1:
        grown = math.ceil(widths[-1] * math.sqrt(2) / WIDTH_MULTIPLE) * WIDTH_MULTIPLE
        widths.append(min(grown, context_length + 1))
    return widths


def width_for(tokens: int, widths: Sequence[int]) -> int:
    """The narrowest bucket holding `tokens` positions (the widest when none does)."""
    return next((width for width in widths if width >= tokens), widths[-1])


@dataclass
class _Bucket:
    width: int
    rows: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # real positions of each row
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer: [rows, kv heads, width, head dim]
    values: list[torch.Tensor] = field(default_factory=list)


class BucketCheckpoint(NamedTuple):
    lengths: dict[str, int]  # each row's length before a step


class BucketCache:
    def __init__(self, config: object, device: torch.device, dtype: torch.dtype, context_length: int) -> None:
        self._config = config
        self._device = device
        self._dtype = dtype
        self._layers = config.num_hidden_layers
        self._heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.widths = bucket_widths(context_length)
        self._buckets = [_Bucket(width) for width in self.widths]
        # This step's buckets with rows: (bucket, where each row writes, first row in the batch, span, mask).
        self._step: list[tuple[_Bucket, torch.Tensor, int, int, torch.Tensor]] = []

    def __len__(self) -> int:
        return sum(len(bucket.rows) for bucket in self._buckets)

    @property
    def rows(self) -> list[str]:
        """Every row in the order of a decode step's batch: bucket by bucket."""
        return [row for bucket in self._buckets for row in bucket.rows]

    @property
    def row_ids(self) -> list[str]:
        return self.rows

    @property
    def allocated_tokens(self) -> int:
        return sum(len(bucket.rows) * bucket.width for bucket in self._buckets)

    def footprint(self, reservations: list[int]) -> int:
        """KV positions rows of these reservations (see memory.reservation) hold at most: each its bucket's width."""
        return sum(width_for(tokens + 1, self.widths) for tokens in reservations)

    def real_length(self, row_id: str) -> int:
        bucket, index = self._find(row_id)
        return bucket.lengths[index]

    def join(self, row_id: str, cache: DynamicCache) -> None:
        """Adds a prefilled sequence (its own cache, all positions real)."""
        length = cache.get_seq_length()
        layers = [layer for layer in cache.layers if layer.keys is not None]
        self._insert(row_id, length, [layer.keys for layer in layers], [layer.values for layer in layers])

    def duplicate(self, source_id: str, row_id: str) -> None:
        """A second sample of a prompt starts from a copy of its row."""
        bucket, index = self._find(source_id)
        length = bucket.lengths[index]
        keys = [k[index : index + 1, :, :length] for k in bucket.keys]
        values = [v[index : index + 1, :, :length] for v in bucket.values]
        self._insert(row_id, length, keys, values)

    def forget_last(self, row_id: str, count: int) -> None:
        """A back-off: the row's last `count` positions go (the next steps overwrite them)."""
        bucket, index = self._find(row_id)
        bucket.lengths[index] -= count

    def extract(self, row_id: str) -> DynamicCache:
        """A standalone cache of one row's positions (for the prefix cache)."""
        bucket, index = self._find(row_id)
        length = bucket.lengths[index]
        extracted = DynamicCache(config=self._config)
        for layer, (keys, values) in enumerate(zip(bucket.keys, bucket.values, strict=True)):
            extracted.update(
                keys[index : index + 1, :, :length].clone(), values[index : index + 1, :, :length].clone(), layer
            )
        return extracted

    def remove(self, row_id: str) -> None:
        bucket, index = self._find(row_id)
        keep = torch.tensor([i for i in range(len(bucket.rows)) if i != index], device=self._device, dtype=torch.long)
        bucket.keys = [k.index_select(0, keep) for k in bucket.keys]
        bucket.values = [v.index_select(0, keep) for v in bucket.values]
        del bucket.rows[index], bucket.lengths[index]

    def checkpoint(self) -> BucketCheckpoint:
        return BucketCheckpoint(
            {row: length for b in self._buckets for row, length in zip(b.rows, b.lengths, strict=True)}
        )

    def restore(self, checkpoint: BucketCheckpoint) -> None:
        """Back to before a step that failed part-way: the positions it wrote are forgotten."""
        for bucket in self._buckets:
            bucket.lengths = [
                checkpoint.lengths.get(row, length) for row, length in zip(bucket.rows, bucket.lengths, strict=True)
            ]

    def step_inputs(self, tokens: dict[str, int]) -> dict:
        """Model inputs for one decode step of every row: its last token at its position. Rows whose bucket is full
        move up first."""
        full = [row for b in self._buckets for row, length in zip(b.rows, b.lengths, strict=True) if length >= b.width]
        for row in full:
            self._move_up(row)
        rows, positions, self._step = self.rows, [], []
        for bucket in [b for b in self._buckets if b.rows]:
            columns = torch.tensor(bucket.lengths, device=self._device, dtype=torch.long)
            positions.extend(bucket.lengths)
            bucket.lengths = [length + 1 for length in bucket.lengths]
            span = max(bucket.lengths)
            # Each row attends to its positions and the one this step writes; columns beyond are stale.
            mask = torch.arange(span, device=self._device) <= columns.unsqueeze(1)
            self._step.append((bucket, columns, len(positions) - len(bucket.rows), span, mask[:, None, None, :]))
        return {
            "input_ids": torch.tensor([[tokens[row]] for row in rows], device=self._device),
            "position_ids": torch.tensor(positions, device=self._device).unsqueeze(1),
            # An already prepared (4-D) mask, so that transformers makes none: each bucket's attention masks
            # its own rows by their lengths.
            "attention_mask": torch.ones(1, 1, 1, 1, dtype=torch.bool, device=self._device),
            "cache": self,
            "bucket_layout": self,
        }

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, **_: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each layer of the forward: writes every row's new key and value at its position. What it
        returns is not read (the bucket attention reads the buckets)."""
        for bucket, columns, start, _, _ in self._step:
            count = len(bucket.rows)
            rows = torch.arange(count, device=self._device)
            bucket.keys[layer_idx][rows, :, columns] = key_states[start : start + count, :, 0].to(self._dtype)
            bucket.values[layer_idx][rows, :, columns] = value_states[start : start + count, :, 0].to(self._dtype)
        return key_states, value_states

    def attention_groups(self, layer_idx: int) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each bucket with rows in this step: its first row in the batch, and its keys, values and mask up to
        its longest row ([rows, kv heads, span, head dim] and [rows, 1, 1, span])."""
        return [
            (start, bucket.keys[layer_idx][:, :, :span], bucket.values[layer_idx][:, :, :span], mask)
            for bucket, _, start, span, mask in self._step
        ]

    def _find(self, row_id: str) -> tuple[_Bucket, int]:
        for bucket in self._buckets:
            if row_id in bucket.rows:
                return bucket, bucket.rows.index(row_id)
        raise KeyError(row_id)

    def _insert(self, row_id: str, length: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Adds a row of `length` positions (`keys`/`values` per layer, [1, heads, >= length, head dim]) to the
        narrowest bucket holding them and the next one."""
        bucket = self._buckets[self.widths.index(width_for(length + 1, self.widths))]
        shape = (1, self._heads, bucket.width, self._head_dim)
        new_keys, new_values = [], []
        for layer in range(self._layers):
            row_keys = torch.zeros(shape, device=self._device, dtype=self._dtype)
            row_values = torch.zeros(shape, device=self._device, dtype=self._dtype)
            row_keys[:, :, :length] = keys[layer][:, :, :length]
            row_values[:, :, :length] = values[layer][:, :, :length]
            new_keys.append(row_keys)
            new_values.append(row_values)
        if bucket.rows:
            bucket.keys = [torch.cat([old, new]) for old, new in zip(bucket.keys, new_keys, strict=True)]
            bucket.values = [torch.cat([old, new]) for old, new in zip(bucket.values, new_values, strict=True)]
        else:
            bucket.keys, bucket.values = new_keys, new_values
        bucket.rows.append(row_id)
        bucket.lengths.append(length)

    def _move_up(self, row_id: str) -> None:
        bucket, index = self._find(row_id)
        length = bucket.lengths[index]
        keys = [k[index : index + 1] for k in bucket.keys]
        values = [v[index : index + 1] for v in bucket.values]
        self.remove(row_id)
        self._insert(row_id, length, keys, values)
