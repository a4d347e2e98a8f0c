"""One decode step over the bucketed batch cache (bucket_cache.py), as the forward sees it.

`BucketCache.advance` lays the rows out bucket by bucket into a `DecodeBatch` (host side: which rows, in which
bucket tensors, how wide each bucket's attention reads). Inside the forward, `StepLayout` turns that and the
step's positions (on the device) into where each row writes and each bucket's attention mask; it is the one seam
between the model and the cache: the decode step passes it to the model as the `bucket_layout` keyword, which
transformers hands to every attention call (forward/attention.py), where each layer writes its new keys and values
and attends bucket by bucket. Computed inside the forward, so that a captured step recomputes it from its inputs.
"""

from typing import NamedTuple

import torch

from server.engine.kv.kv_format import KvFormat


class BucketStep(NamedTuple):
    """One bucket's part of a decode batch."""

    keys: list[torch.Tensor]  # per layer, the bucket's whole tensor [capacity, kv heads, width, stored width]
    values: list[torch.Tensor]
    start: int  # its first row in the batch
    rows: int  # its rows in the batch (padded: every slot)
    span: int  # the columns its attention reads


class DecodeBatch(NamedTuple):
    """One decode step's rows, laid out bucket by bucket."""

    row_of: dict[str, int]  # where each running sample's row sits in the batch
    inputs: torch.Tensor  # [2, batch] on the CPU: each row's token and position (padding rows: 0, 0)
    buckets: list[BucketStep]
    shape: tuple  # what a padded step's shapes and addresses depend on: each bucket's (width, rows, generation)
    kv_format: KvFormat  # how the buckets store keys and values


class _Part(NamedTuple):
    bucket: BucketStep
    slots: torch.Tensor  # the bucket's slots this step writes, 0..rows-1
    columns: torch.Tensor  # the column each of those rows writes: its position
    mask: torch.Tensor  # [rows, 1, 1, span]: each row sees its positions and the one this step writes
    decoded: tuple[torch.Tensor, torch.Tensor] | None  # an 8-bit cache's keys and values read back, every layer


class StepLayout:
    def __init__(self, batch: DecodeBatch, positions: torch.Tensor) -> None:
        """`positions`: the batch's positions, on the device (the second row of its inputs)."""
        self._format = batch.kv_format
        self._parts = []
        for bucket in batch.buckets:
            columns = positions[bucket.start : bucket.start + bucket.rows]
            # Columns beyond a row's position are stale (or another row's, after a back-off): masked.
            visible = torch.arange(bucket.span, device=positions.device) <= columns.unsqueeze(1)
            slots = torch.arange(bucket.rows, device=positions.device)
            self._parts.append(_Part(bucket, slots, columns, visible[:, None, None, :], self._buffers(bucket)))

    def _buffers(self, bucket: BucketStep) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Where an 8-bit cache's keys and values are decoded, layer after layer, in this step."""
        if not self._format.quantized:
            return None
        stored = bucket.keys[0]
        shape = (bucket.rows, stored.shape[1], bucket.span, stored.shape[3] - 1)
        keys, values = (torch.empty(shape, dtype=self._format.dtype, device=stored.device) for _ in range(2))
        return keys, values

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Stores every row's new key and value ([batch, kv heads, 1, head dim]) at its position."""
        keys, values = self._format.encode(keys[:, :, 0]), self._format.encode(values[:, :, 0])
        for part in self._parts:
            rows = slice(part.bucket.start, part.bucket.start + part.bucket.rows)
            part.bucket.keys[layer][part.slots, :, part.columns] = keys[rows]
            part.bucket.values[layer][part.slots, :, part.columns] = values[rows]

    @property
    def stored_as_computed(self) -> bool:
        """Whether the buckets hold keys and values in the model's dtype (not an 8-bit format)."""
        return not self._format.quantized

    def in_place(self, layer: int) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For an attention that writes and reads the buckets itself (forward/fused_layers.py): each bucket's first
        row in the batch, its whole key and value tensors of `layer`, and where each of its rows writes."""
        return [
            (part.bucket.start, part.bucket.keys[layer], part.bucket.values[layer], part.columns)
            for part in self._parts
        ]

    def groups(self, layer: int) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each bucket: its first row in the batch, and its keys, values (in the model's dtype) and mask over
        the columns its attention reads ([rows, kv heads, span, head dim] and [rows, 1, 1, span])."""
        return [(part.bucket.start, *self._read(part, layer), part.mask) for part in self._parts]

    def _read(self, part: _Part, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, span = part.bucket.rows, part.bucket.span
        keys = part.bucket.keys[layer][:rows, :, :span]
        values = part.bucket.values[layer][:rows, :, :span]
        if part.decoded is None:
            return keys, values
        return self._format.decode(keys, part.decoded[0]), self._format.decode(values, part.decoded[1])
