"""Load test: a few hundred mixed requests at 32 concurrent clients against a server on loopback, checking that
nothing is lost and nothing leaks.

    .venv/bin/python -m bench.load [--requests 300] [--concurrency 32] [--url URL]

Without `--url` it starts the server itself on the embedded model (`python -m server`). The mix: streamed and
plain completions, chat completions, streams the client abandons after a few events, prompts longer than the
context, malformed bodies, and `n` = 2. It reports 5xx answers (must be 0), requests lost (accepted but never
finished nor errored: must be 0), running slots and batch-cache rows left after the run (must be 0), resident
memory after a warm-up and after each round of requests, and the throughput. Prints a table and writes JSON (default
bench/results/load.json).
"""

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.serve import roleplay_history

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    kind: str
    status: int  # 0: no HTTP answer at all
    finished: bool  # a final answer arrived: a finish reason, an error body or event, or a refusal
    tokens: int = 0


async def streamed(client: httpx.AsyncClient, path: str, body: dict, kind: str, *, abandon_after: int = 0) -> Outcome:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Outcome(kind, response.status_code, finished=True)
        events = 0
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            events += 1
            if abandon_after and events >= abandon_after:
                return Outcome(kind, 200, finished=True)  # the client leaves; the server must free the slot
            if "error" in event:
                return Outcome(kind, 200, finished=True)
            if event.get("usage"):  # the last event, after the finish reason
                return Outcome(kind, 200, finished=True, tokens=event["usage"]["completion_tokens"])
        return Outcome(kind, 200, finished=False, tokens=events)


async def plain(client: httpx.AsyncClient, path: str, body: dict | str, kind: str) -> Outcome:
    if isinstance(body, str):
        response = await client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = await client.post(path, json=body)
    if response.status_code != 200:
        return Outcome(kind, response.status_code, finished="error" in response.json())
    answer = response.json()
    finished = all(choice.get("finish_reason") for choice in answer["choices"])
    return Outcome(kind, 200, finished=finished, tokens=answer["usage"]["completion_tokens"])


def request_mix(rng: random.Random, context_tokens: int) -> Callable[[httpx.AsyncClient], Awaitable[Outcome]]:
    """One request of the mix, as a coroutine factory."""
    prompt = roleplay_history(rng.randrange(10**6), rng.choice([50, 200, 600])) + "\n\n::::assistant:Greta:"
    tokens = rng.randint(8, 40)
    completion = {"prompt": prompt, "max_tokens": tokens}
    chat = {
        "messages": [
            {"role": "user", "name": "Anon", "content": "The lamp is out again."},
            {"role": "assistant", "name": "Greta", "content": "Then we climb the stairs once more."},
        ],
        "max_tokens": tokens,
    }
    choices: list[tuple[float, Callable[[httpx.AsyncClient], Awaitable[Outcome]]]] = [
        (0.25, lambda c: streamed(c, "/v1/completions", completion, "stream")),
        (0.20, lambda c: plain(c, "/v1/completions", completion, "plain")),
        (0.15, lambda c: streamed(c, "/v1/chat/completions", chat, "chat-stream")),
        (0.10, lambda c: plain(c, "/v1/chat/completions", chat, "chat")),
        (
            0.10,
            lambda c: streamed(c, "/v1/completions", {**completion, "max_tokens": 200}, "abandoned", abandon_after=3),
        ),
        (0.05, lambda c: plain(c, "/v1/completions", {**completion, "n": 2}, "n=2")),
        (0.05, lambda c: plain(c, "/v1/completions", {"prompt": "word " * (context_tokens + 10)}, "over-long")),
        (0.05, lambda c: plain(c, "/v1/completions", '{"prompt": "unterminated', "malformed")),
        (0.05, lambda c: plain(c, "/v1/completions", {"prompt": "x", "temperature": -1}, "invalid")),
    ]
    weights, factories = zip(*choices, strict=True)
    return rng.choices(factories, weights=weights)[0]


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    return float(re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE).group(1))


async def settled_health(client: httpx.AsyncClient, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = (await client.get("/health")).json()
        if (health["running"], health["waiting"], health["running_caches"]) == (0, 0, 0):
            return health
        if time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.1)


async def run_batch(client: httpx.AsyncClient, count: int, concurrency: int, seed: int, context: int) -> list:
    rng = random.Random(seed)
    factories = [request_mix(rng, context) for _ in range(count)]
    gate = asyncio.Semaphore(concurrency)

    async def one(factory: Callable[[httpx.AsyncClient], Awaitable[Outcome]]) -> Outcome:
        async with gate:
            try:
                return await factory(client)
            except (httpx.HTTPError, json.JSONDecodeError) as error:
                return Outcome(f"transport:{type(error).__name__}", 0, finished=False)

    return await asyncio.gather(*(one(factory) for factory in factories))


async def run(args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        context = (await client.get("/v1/models")).json()["data"][0].get("max_model_len", 8192)
        await run_batch(client, args.warmup, args.concurrency, seed=0, context=context)
        await settled_health(client)
        rss = [await metric(client, "process_resident_memory_bytes")]
        outcomes, elapsed = [], 0.0
        # In rounds, to tell growth that stops (the prefix cache filling up to its budget) from a leak.
        for round_index in range(args.rounds):
            started = time.perf_counter()
            count = args.requests // args.rounds
            outcomes += await run_batch(client, count, args.concurrency, seed=1 + round_index, context=context)
            elapsed += time.perf_counter() - started
            health = await settled_health(client)
            rss.append(await metric(client, "process_resident_memory_bytes"))
        prefix_cache_bytes = await metric(client, 'rpserve_kv_cache_bytes{use="prefix_cache"}')
    statuses = Counter(o.status for o in outcomes)
    return {
        "requests": len(outcomes),
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(len(outcomes) / elapsed, 2),
        "generated_tokens_per_s": round(sum(o.tokens for o in outcomes) / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "kinds": dict(Counter(o.kind for o in outcomes)),
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "lost": sum(1 for o in outcomes if not o.finished),
        "left_running": health["running"] + health["waiting"],
        "left_running_caches": health["running_caches"],
        "prefix_cache_entries": health["prefix_cache_entries"],
        "prefix_cache_mb": round(prefix_cache_bytes / 2**20, 1),
        "rss_mb_after_warmup_then_each_round": [round(value / 2**20, 1) for value in rss],
    }


def start_server(port: int, extra_args: Sequence[str] = ()) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port), "--log-level", "warning", *extra_args], cwd=ROOT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:  # e.g. the port was taken: whatever answers there is not this server
            raise SystemExit(f"the server exited with {server.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; without it one is started on the embedded model")
    parser.add_argument("--port", type=int, default=8765, help="port for the server this script starts")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300, help="per request, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    server = None
    if args.url is None:
        server = start_server(args.port)
        args.url = f"http://127.0.0.1:{args.port}"
    try:
        result = asyncio.run(run(args))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    verdict = result["server_errors_5xx"] == result["lost"] == result["left_running"] == 0
    sys.exit(0 if verdict and result["left_running_caches"] == 0 else 1)


if __name__ == "__main__":
    main()
