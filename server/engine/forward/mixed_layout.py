"""What a mixed step's attention reads (mixed_step.py): the prompt chunks and the decode rows that share one
forward, in the order of its rows: each chunk's positions, then the decode rows."""

from typing import NamedTuple

from transformers import DynamicCache

from server.engine.kv.step_layout import StepLayout


class ChunkRows(NamedTuple):
    """One prompt chunk's rows: how many, and its prompt's own cache, which their keys and values extend."""

    length: int
    cache: DynamicCache


class MixedLayout(NamedTuple):
    chunks: list[ChunkRows]
    decode: StepLayout | None  # the decode rows' buckets; None when the step decodes nothing
