"""The HTTP stream against the engine's own step: what the server adds between a decode step and the client.

    .venv/bin/python -m bench.stream_floor [--url http://127.0.0.1:8765] [--runs 3] [--max-tokens 64]

Streams one request at a time (a ~2,000-token roleplay prompt, DRY off, no stop strings) and reads the engine's
step and forward time from `/health` before its second token and after its last: the stream's median
inter-token gap over the engine's mean step in the same window is the HTTP side's cost (1.0: none). The same
window, so that this noisy machine's speed changes fall on both. Without `--url` a server is started here on the
embedded model (`--server-arg` adds flags).
"""

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import httpx

from bench.load import start_server
from bench.serve import Shape


def one_run(client: httpx.Client, url: str, shape: Shape, seed: int) -> dict:
    body = {
        "prompt": shape.prompt(seed),
        "max_tokens": shape.max_tokens,
        "stream": True,
        "ignore_eos": True,
        "dry_multiplier": 0,
    }
    before: dict | None = None
    gaps: list[float] = []
    last = 0.0
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            now = time.perf_counter()
            if before is None:
                before = client.get(f"{url}/health").json()
                now = time.perf_counter()  # the gap starts after the health call
            else:
                gaps.append(now - last)
            last = now
    after = client.get(f"{url}/health").json()
    assert before is not None, "the stream sent no text"
    steps = after["steps"] - before["steps"]
    step_ms = (after["step_seconds"] - before["step_seconds"]) / steps * 1000
    return {
        "itl_median_ms": round(statistics.median(gaps) * 1000, 1),
        "itl_mean_ms": round(statistics.mean(gaps) * 1000, 1),
        "engine_step_ms": round(step_ms, 1),
        "forward_ms": round((after["forward_seconds"] - before["forward_seconds"]) / steps * 1000, 1),
        "stream_over_step": round(statistics.mean(gaps) * 1000 / step_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="our running server (started with --stop-strings '[]')")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stream_floor.json")
    args = parser.parse_args()
    server = None
    if args.url is None:
        server = start_server(args.port, ["--stop-strings", "[]", *args.server_arg])
        args.url = f"http://127.0.0.1:{args.port}"
    shape = Shape(max_tokens=args.max_tokens)
    try:
        with httpx.Client(timeout=600) as client:
            runs = [one_run(client, args.url, shape, random.randrange(1 << 30)) for _ in range(args.runs)]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    print(f"{'ITL p50 ms':>10} {'ITL mean':>9} {'step ms':>8} {'forward':>8} {'stream/step':>11}")
    for run in runs:
        print(
            f"{run['itl_median_ms']:>10} {run['itl_mean_ms']:>9} {run['engine_step_ms']:>8} {run['forward_ms']:>8} "
            f"{run['stream_over_step']:>11}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
