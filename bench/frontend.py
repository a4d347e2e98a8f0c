"""Does the serving layer keep up with a GPU? The real server runs with a model whose forward costs nothing
(bench/stub_server.py: fixed logits, greedy), so everything else is measured: the engine loop, the sampling
chain, detokenizing, stop scanning, SSE over HTTP. A load generator in another process streams N requests at
once and counts the tokens delivered; the engine's time per step outside the (stub) forward and the sampling
chain comes from the server itself (its engine counters in /health).

    .venv/bin/python -m bench.frontend [--streams 1 8 32 64] [--tokens 400] [--out FILE]

Prints a table and writes JSON (default bench/results/frontend.json).
"""

import argparse
import asyncio
import json
import multiprocessing
import platform
import time
from pathlib import Path

import httpx

from tests.integration.server_process import ServerProcess

PROMPT = "::::user: Let's engage together in a roleplay.\n\n::::user:Anon: Hello there.\n\n::::assistant:Nanashi:"


async def _stream(client: httpx.AsyncClient, tokens: int) -> int:
    body = {
        "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "dry_multiplier": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    generated = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage": {' in line:
                generated = json.loads(line[6:])["usage"]["completion_tokens"]
    return generated


def load(url: str, streams: int, tokens: int, results: multiprocessing.Queue) -> None:
    """The load generator (its own process): `streams` streamed requests at once."""

    async def run() -> tuple[int, float]:
        limits = httpx.Limits(max_connections=streams + 4)
        async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
            started = time.perf_counter()
            counts = await asyncio.gather(*(_stream(client, tokens) for _ in range(streams)))
            return sum(counts), time.perf_counter() - started

    results.put(asyncio.run(run()))


def measure(server: ServerProcess, streams: int, tokens: int) -> dict:
    before = server.health()
    results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(target=load, args=(server.url, streams, tokens, results))
    process.start()
    delivered, seconds = results.get()
    process.join()
    after = server.health()
    steps = after["steps"] - before["steps"]
    spent = {name: after[name] - before[name] for name in ("step_seconds", "forward_seconds", "sampling_seconds")}
    outside = spent["step_seconds"] - spent["forward_seconds"] - spent["sampling_seconds"]
    return {
        "streams": streams,
        "tokens_delivered": delivered,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(delivered / seconds, 1),
        "engine_steps": steps,
        "step_ms": round(spent["step_seconds"] / steps * 1000, 3),
        "sampling_ms_per_step": round(spent["sampling_seconds"] / steps * 1000, 3),
        "engine_ms_per_step_outside_forward_and_sampling": round(outside / steps * 1000, 3),
        "engine_busy_share": round(spent["step_seconds"] / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--tokens", type=int, default=400, help="tokens per stream")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "frontend.json")
    args = parser.parse_args()
    most = max(args.streams)
    server = ServerProcess(
        "--max-running", str(most), "--max-queued", str(most), "--request-timeout", "0", module="bench.stub_server"
    ).wait_ready()
    rows = []
    try:
        measure(server, 4, 50)  # warm-up
        header = ("streams", "tok/s", "steps", "step ms", "sampling ms", "other engine ms", "engine busy")
        print("{:>7} {:>9} {:>7} {:>8} {:>12} {:>16} {:>12}".format(*header))
        for streams in args.streams:
            row = measure(server, streams, args.tokens)
            rows.append(row)
            print(
                f"{streams:>7} {row['tokens_per_second']:>9.1f} {row['engine_steps']:>7} {row['step_ms']:>8.3f} "
                f"{row['sampling_ms_per_step']:>12.3f} {row['engine_ms_per_step_outside_forward_and_sampling']:>16.3f} "
                f"{row['engine_busy_share']:>11.0%}"
            )
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpu_count": multiprocessing.cpu_count(), "tokens_per_stream": args.tokens}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
