"""Where the server's two processes should run on a small CPU: the HTTP process (uvicorn, SSE) and the engine
process (the forward, on torch's threads) on every core as the OS schedules them, against the HTTP process kept
to one core. One server, its processes' CPU sets changed between runs (every thread of each, as `taskset -a`
does), the configurations alternating; streamed 1 and 8 concurrent requests, medians over the rounds.

    .venv/bin/python -m bench.affinity [--rounds 2] [--history-tokens 1000] [--max-tokens 64]
                                       [--out bench/results/affinity.json]
"""

import argparse
import asyncio
import json
import os
import random
import statistics
from pathlib import Path

import httpx

from bench.load import start_server
from bench.serve import Shape, Target, concurrency_level

CORES = sorted(os.sched_getaffinity(0))
# (HTTP process's cores, engine process's cores)
LAYOUTS = {
    "shared": (CORES, CORES),
    "http-on-last-core": (CORES[-1:], CORES),
}
METRICS = ("ttft_median_s", "itl_median_ms", "itl_p90_ms", "throughput_tok_s")


def pin(pid: int, cores: list[int]) -> None:
    """Every thread of a process onto `cores`."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(thread), cores)


def engine_pid(server_pid: int) -> int:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return int(children[0])


async def measure(args: argparse.Namespace, url: str, pids: tuple[int, int]) -> dict:
    shape = Shape(args.history_tokens, 50, args.max_tokens)
    target = Target(url, "default", {"dry_multiplier": 0})
    rows: dict[str, dict[int, list[dict]]] = {name: {1: [], 8: []} for name in LAYOUTS}
    seed = random.randrange(1 << 30)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800)) as client:
        for round_index in range(args.rounds):
            order = list(LAYOUTS) if round_index % 2 == 0 else list(reversed(LAYOUTS))
            for name in order:
                for pid, cores in zip(pids, LAYOUTS[name], strict=True):
                    pin(pid, cores)
                for streams in (1, 8):
                    seed += 1000  # new prompts every time: no prefix cache hits
                    row = await concurrency_level(client, target, shape, streams, seed)
                    rows[name][streams].append(row)
                    print(f"round {round_index + 1}: {name} {streams} streams {row}", flush=True)
    return {
        name: {
            streams: {m: round(statistics.median(r[m] for r in runs), 3) for m in METRICS}
            for streams, runs in by.items()
        }
        for name, by in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--history-tokens", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "affinity.json")
    args = parser.parse_args()
    server = start_server(args.port, ["--stop-strings", "[]"])
    try:
        result = asyncio.run(measure(args, f"http://127.0.0.1:{args.port}", (server.pid, engine_pid(server.pid))))
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\n{'layout':>18} {'streams':>7} " + " ".join(f"{m:>16}" for m in METRICS))
    for name, by in result.items():
        for streams, values in by.items():
            print(f"{name:>18} {streams:>7} " + " ".join(f"{values[m]:>16}" for m in METRICS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cores": CORES, "layouts": LAYOUTS, "result": result}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
