"""The real server with its captured decode step broken on purpose (its logits off by 0.5), to prove the self-check
catches it and the server serves eager. Run as `python -m tests.integration.capture_fault_server [server flags]`:
the engine's process imports this module too (multiprocessing's spawn runs the main module again), where the
patch applies."""

import sys

import torch

from server import cli
from server.engine.forward.decode_graphs import DecodeGraphs
from server.engine.kv.step_layout import DecodeBatch

original_run = DecodeGraphs.run


def _run(graphs: DecodeGraphs, batch: DecodeBatch) -> torch.Tensor:
    return original_run(graphs, batch) + 0.5


DecodeGraphs.run = _run

if __name__ == "__main__":
    sys.exit(cli.main())
