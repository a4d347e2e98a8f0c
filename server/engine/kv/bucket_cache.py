"""The running requests' KV cache in width buckets, sized to each chat's real length.

Every row lives in the narrowest bucket that holds its tokens and the one the next step writes; buckets grow by
about sqrt(2), so a row's memory is at most ~1.4x its real KV (left-padding to the longest chat, as one shared
tensor does, holds 2.6x for eight roleplay chats of 500 to 12,000 tokens: bench/RESULTS.md). A row that fills its
bucket moves up to the next one. Rows are left-aligned: a row's positions are columns 0..length-1, its RoPE
position is its length, and backing off (banned strings) is shortening it.

Each bucket is one pre-allocated tensor per layer of `capacity` slots, capacities stepping 1, 2, 3, 4, 6, 8, 12,
... (batch-size buckets): its rows fill the first slots, and a row that leaves is replaced by the last one, so a
row's storage never moves while it stays in its bucket. A bucket is re-allocated only when its row count crosses a
capacity step, and each re-allocation gets a new `generation`: a captured decode step (server/engine/forward/
decode_graphs.py) is valid for exactly the buckets' (width, capacity, generation) it was captured on.

A decode step is one forward over every row (server/engine/forward/decode_step.py): `advance` lays the rows out
bucket by bucket (eager: the rows there are; padded: every slot, for a step of fixed shapes) into a DecodeBatch,
which the forward reads and writes through a StepLayout (step_layout.py).
"""

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import DynamicCache, PreTrainedConfig

from server.engine.kv.kv_format import KvFormat, kv_heads_and_dim, layer_tensors
from server.engine.kv.step_layout import BucketStep, DecodeBatch

# The narrowest bucket, in tokens; each next one is about sqrt(2) wider, rounded to this multiple.
FIRST_WIDTH = 256
WIDTH_MULTIPLE = 64

_generations = itertools.count(1)


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


def capacity_for(rows: int) -> int:
    """Slots a bucket of `rows` rows allocates: 0, or the smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... holding
    them (so at most a third of a bucket's slots are empty, and few batch shapes occur)."""
    if rows <= 3:
        return rows
    power = 2 ** (rows - 1).bit_length()
    return power * 3 // 4 if rows <= power * 3 // 4 else power


@dataclass
class _Bucket:
    width: int
    rows: list[str] = field(default_factory=list)  # the first slots' rows, in slot order
    lengths: list[int] = field(default_factory=list)  # real positions of each row
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer: [capacity, kv heads, width, stored width]
    values: list[torch.Tensor] = field(default_factory=list)
    generation: int = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0


class BucketCheckpoint(NamedTuple):
    lengths: dict[str, int]  # each row's length before a step


class BucketCache:
    def __init__(
        self, config: PreTrainedConfig, device: torch.device, kv_format: KvFormat, context_length: int
    ) -> None:
        """`kv_format`: how keys and values are stored (kv_format.py)."""
        self._config = config
        self._device = device
        self._format = kv_format
        self._layers = config.num_hidden_layers
        self._heads, head_dim = kv_heads_and_dim(config)
        self._stored_width = kv_format.stored_width(head_dim)
        self.widths = bucket_widths(context_length)
        self._buckets = [_Bucket(width) for width in self.widths]

    def __len__(self) -> int:
        return sum(len(bucket.rows) for bucket in self._buckets)

    @property
    def rows(self) -> list[str]:
        """Every row, bucket by bucket in slot order."""
        return [row for bucket in self._buckets for row in bucket.rows]

    @property
    def allocated_tokens(self) -> int:
        return sum(bucket.capacity * bucket.width for bucket in self._buckets)

    def footprint(self, reservations: list[int]) -> int:
        """KV positions rows of these reservations (see memory.reservation) hold at most: in each bucket,
        its capacity for the rows that may reach it times its width."""
        rows = [0] * len(self.widths)
        for tokens in reservations:
            rows[self.widths.index(width_for(tokens + 1, self.widths))] += 1
        return sum(capacity_for(count) * width for count, width in zip(rows, self.widths, strict=True))

    def real_length(self, sample_id: str) -> int:
        bucket, slot = self._find(sample_id)
        return bucket.lengths[slot]

    def join(self, sample_id: str, cache: DynamicCache) -> None:
        """Adds a prefilled sequence (its own cache in the model's dtype, all positions real)."""
        length = cache.get_seq_length()
        keys, values = layer_tensors(cache)
        encode = self._format.encode
        self._insert(sample_id, length, [encode(k) for k in keys], [encode(v) for v in values])

    def duplicate(self, source_id: str, sample_id: str) -> None:
        """A second sample of a prompt starts from a copy of its row."""
        bucket, slot = self._find(source_id)
        self._insert(sample_id, bucket.lengths[slot], *self._row(bucket, slot))

    def truncate(self, sample_id: str, length: int) -> None:
        """A back-off: the row keeps its first `length` positions (the next steps overwrite the others)."""
        bucket, slot = self._find(sample_id)
        bucket.lengths[slot] = length

    def extract(self, sample_id: str) -> DynamicCache:
        """A standalone cache of one row's positions as stored (for the prefix cache)."""
        bucket, slot = self._find(sample_id)
        length = bucket.lengths[slot]
        extracted = DynamicCache(config=self._config)
        for layer, (keys, values) in enumerate(zip(*self._row(bucket, slot), strict=True)):
            extracted.update(keys[:, :, :length].clone(), values[:, :, :length].clone(), layer)
        return extracted

    def remove(self, sample_id: str) -> None:
        self._free(*self._find(sample_id))

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

    def advance(self, tokens: dict[str, int], *, padded: bool) -> DecodeBatch:
        """Lays out one decode step of every row, each fed its token at its position, and counts that position as
        written. Rows whose bucket is full move up first. `padded`: every slot of a bucket is in the batch (the
        empty ones write into their own free slot) and its attention reads the bucket's whole width, so that the
        step's shapes and addresses depend only on `shape`."""
        full = [row for b in self._buckets for row, length in zip(b.rows, b.lengths, strict=True) if length >= b.width]
        for row in full:
            self._move_up(row)
        for bucket in self._buckets:
            if capacity_for(len(bucket.rows)) < bucket.capacity:
                self._resize(bucket, capacity_for(len(bucket.rows)))
        row_of: dict[str, int] = {}
        fed: list[int] = []
        positions: list[int] = []
        steps: list[BucketStep] = []
        shape: list[tuple[int, int, int]] = []
        for bucket in [b for b in self._buckets if b.rows]:
            count = bucket.capacity if padded else len(bucket.rows)
            empty = count - len(bucket.rows)
            start = len(fed)
            row_of.update({row: start + slot for slot, row in enumerate(bucket.rows)})
            fed.extend([tokens[row] for row in bucket.rows] + [0] * empty)
            positions.extend(bucket.lengths + [0] * empty)
            bucket.lengths = [length + 1 for length in bucket.lengths]
            span = bucket.width if padded else max(bucket.lengths)
            steps.append(BucketStep(bucket.keys, bucket.values, start, count, span))
            shape.append((bucket.width, count, bucket.generation))
        return DecodeBatch(row_of, torch.tensor([fed, positions]), steps, tuple(shape), self._format)

    def _find(self, sample_id: str) -> tuple[_Bucket, int]:
        for bucket in self._buckets:
            if sample_id in bucket.rows:
                return bucket, bucket.rows.index(sample_id)
        raise KeyError(sample_id)

    def _row(self, bucket: _Bucket, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A row's stored keys and values per layer, [1, kv heads, width, stored width] views of its slot."""
        return [k[slot : slot + 1] for k in bucket.keys], [v[slot : slot + 1] for v in bucket.values]

    def _insert(self, sample_id: str, length: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Adds a row of `length` positions (stored `keys`/`values` per layer, [1, heads, >= length, stored
        width]) to the narrowest bucket holding them and the next one."""
        bucket = self._buckets[self.widths.index(width_for(length + 1, self.widths))]
        if len(bucket.rows) == bucket.capacity:
            self._resize(bucket, capacity_for(len(bucket.rows) + 1))
        slot = len(bucket.rows)
        for layer in range(self._layers):
            bucket.keys[layer][slot, :, :length] = keys[layer][0, :, :length]
            bucket.values[layer][slot, :, :length] = values[layer][0, :, :length]
        bucket.rows.append(sample_id)
        bucket.lengths.append(length)

    def _free(self, bucket: _Bucket, slot: int) -> None:
        """Frees a slot: the bucket's last row moves into it. An emptied bucket lets its memory go at once; one
        whose rows now fit a smaller capacity shrinks before the next step (`advance`), once however many rows
        left meanwhile."""
        last = len(bucket.rows) - 1
        if slot != last:
            length = bucket.lengths[last]
            for tensors in (bucket.keys, bucket.values):
                for layer in tensors:
                    layer[slot, :, :length] = layer[last, :, :length]
            bucket.rows[slot], bucket.lengths[slot] = bucket.rows[last], bucket.lengths[last]
        del bucket.rows[last], bucket.lengths[last]
        if not bucket.rows:
            self._resize(bucket, 0)

    def _resize(self, bucket: _Bucket, capacity: int) -> None:
        """Re-allocates a bucket for `capacity` slots, keeping its rows; layer by layer, so that the old and the
        new allocation are held together for one layer at a time."""
        kept = min(len(bucket.rows), capacity)
        if capacity == 0:
            bucket.keys, bucket.values = [], []
        elif not bucket.keys:
            bucket.keys = [self._resized(None, 0, capacity, bucket.width) for _ in range(self._layers)]
            bucket.values = [self._resized(None, 0, capacity, bucket.width) for _ in range(self._layers)]
        else:
            for tensors in (bucket.keys, bucket.values):
                for layer, old in enumerate(tensors):
                    tensors[layer] = self._resized(old, kept, capacity, bucket.width)
        bucket.generation = next(_generations)

    def _resized(self, old: torch.Tensor | None, kept: int, capacity: int, width: int) -> torch.Tensor:
        shape = (capacity, self._heads, width, self._stored_width)
        resized = torch.empty(shape, device=self._device, dtype=self._format.storage_dtype)
        if old is not None:
            resized[:kept] = old[:kept]
        # Zeros, not leftover memory, in the free slots: a stale column is masked, but a masked NaN would still
        # poison the attention's sum.
        resized[kept:].zero_()
        return resized

    def _move_up(self, sample_id: str) -> None:
        """A full row moves to the next bucket (copied there before its slot here is freed)."""
        bucket, slot = self._find(sample_id)
        self._insert(sample_id, bucket.lengths[slot], *self._row(bucket, slot))
        self._free(bucket, slot)
