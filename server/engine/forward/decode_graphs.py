"""Captured decode: one CUDA graph per padded batch shape, captured the first time that shape occurs and replayed
after, so that a decode step costs one launch instead of one per operation (about 1,300 for Llama-3.1-8B).

A shape is each occupied bucket's (width, capacity, generation) (server/engine/kv/bucket_cache.py): the bucket
tensors a graph writes and reads stay where they are until the bucket is re-allocated, which gives it a new
generation. Graphs share one memory pool (they never run at the same time); the least recently used go beyond
MAX_GRAPHS. On a device without CUDA graphs (the CPU) the same padded step runs directly: the shapes and the code
are the captured ones, only the recording is left out.
"""

import logging
import time
from collections import OrderedDict
from typing import Any, NamedTuple

import torch

from server.engine.forward.decode_step import DecodeStep
from server.engine.kv.step_layout import DecodeBatch

log = logging.getLogger(__name__)

MAX_GRAPHS = 64
# Runs before a capture, on a side stream: lazy initialisations (cuBLAS workspaces, autotuning) must not happen
# while recording.
WARM_UP_RUNS = 2


class CaptureFailed(Exception):
    """Capturing a decode step failed; the step did not run."""


class _Graph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # [2, batch] tokens and positions, copied in before each replay
    logits: torch.Tensor  # [batch, vocab], written by each replay


class DecodeGraphs:
    def __init__(self, step: DecodeStep, device: torch.device) -> None:
        self._step = step
        self._device = device
        self._record = device.type == "cuda"
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool: Any = None  # the graphs' shared memory pool, once the first is captured

    def run(self, batch: DecodeBatch) -> torch.Tensor:
        """The padded `batch`'s logits, from its graph (captured now if its shape is new). The logits tensor is
        the graph's own: read it before the next step."""
        if not self._record:
            return self._step(batch, batch.inputs.to(self._device))
        graph = self._graphs.get(batch.shape)
        if graph is None:
            graph = self._capture(batch)
        self._graphs.move_to_end(batch.shape)
        graph.inputs.copy_(batch.inputs, non_blocking=True)
        graph.graph.replay()
        return graph.logits

    def _forget_stale(self, shape: tuple) -> None:
        """Drops the graphs of buckets since re-allocated (a bucket in `shape` with a newer generation): they can
        never match again, and each holds its logits."""
        current = {width: generation for width, _, generation in shape}
        for old in [old for old in self._graphs if any(current.get(w, g) != g for w, _, g in old)]:
            del self._graphs[old]

    def _capture(self, batch: DecodeBatch) -> _Graph:
        started = time.perf_counter()
        try:
            inputs = batch.inputs.to(self._device)
            # Warm-up runs write this step's keys and values at the positions it writes: the replay rewrites them.
            side = torch.cuda.Stream(self._device)
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(WARM_UP_RUNS):
                    self._step(batch, inputs)
            torch.cuda.current_stream(self._device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                logits = self._step(batch, inputs)
        except Exception as error:
            raise CaptureFailed(f"capturing the decode step failed: {type(error).__name__}: {error}") from error
        self._pool = graph.pool()
        self._forget_stale(batch.shape)
        self._graphs[batch.shape] = _Graph(graph, inputs, logits)
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        log.info(
            "decode: captured the step for %d rows in buckets %s in %.0f ms (%d graphs)",
            inputs.shape[1],
            [width for width, _, _ in batch.shape],
            (time.perf_counter() - started) * 1000,
            len(self._graphs),
        )
        return self._graphs[batch.shape]
