"""The real server with its captured decode step broken on purpose, to prove the self-check catches it and the
server serves eager. Run as `python -m tests.integration.capture_fault_server [server flags]` with
`CAPTURE_FAULT` set to `fail` (capturing raises) or `differ` (the captured step's logits are off by 0.5).
"""

import os
import sys

from server import cli
from server.engine.forward.decode_graphs import CaptureFailed, DecodeGraphs

original_run = DecodeGraphs.run


def _run(graphs: DecodeGraphs, batch: object) -> object:
    if os.environ["CAPTURE_FAULT"] == "fail":
        raise CaptureFailed("capturing the decode step failed: RuntimeError: injected")
    return original_run(graphs, batch) + 0.5


DecodeGraphs.run = _run

if __name__ == "__main__":
    sys.exit(cli.main())
