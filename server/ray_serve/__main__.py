"""`rpserve-ray` (or `python -m server.ray_serve`): the same settings as `rpserve`, served by Ray Serve replicas.

It joins the Ray cluster named by `RAY_ADDRESS` (e.g. `auto` on a node where `ray start` ran), or starts a local
one, and serves on `--host`/`--port` until stopped.
"""

import os
import signal
import sys
import threading

import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.config import HTTPOptions

from server.ray_serve.deployment import build
from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as error:
        first = error.errors()[0]
        print(f"rpserve-ray: error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
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
