"""`rpserve-ray` (or `python -m server.ray_serve`): the same settings as `rpserve`, served by Ray Serve replicas.

It joins the Ray cluster named by `RAY_ADDRESS` (e.g. `auto` on a node where `ray start` ran), or starts a local
one, and serves on `--host`/`--port` until stopped.
"""

import os
import signal
import sys
import threading

import ray
from ray import serve
from ray.serve.config import HTTPOptions

from server.ray_serve.deployment import build
from server.settings import command_line_settings


def main(argv: list[str] | None = None) -> int:
    settings = command_line_settings("rpserve-ray", argv)
    if settings is None:
        return 2
    ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    serve.start(http_options=HTTPOptions(host=settings.host, port=settings.port))
    serve.run(build(settings), name="rpserve", route_prefix="/")
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    print(f"rpserve-ray: serving on http://{settings.host}:{settings.port}", flush=True)
    stopped.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
