"""Load generator for any OpenAI-compatible server (ours or a peer): throughput, time to first token and
inter-token latency at several concurrency levels with roleplay-shaped prompts, plus a follow-up-turn and a
swipe scenario against a cold start.

    .venv/bin/python -m bench.serve --url http://127.0.0.1:8000 --label ours [--concurrency 1 4 8 16]

Each stream gets its own chat (no shared prefixes between streams), a history of about `--history-tokens`
tokens plus a new turn of about `--new-tokens`. Prints a table and writes JSON (default
bench/results/serve-<label>.json).
"""

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

WORDS = ["keeper", "lamp", "sea", "fog", "ship", "storm", "stairs", "light", "rock", "night", "harbour", "bell"]
CHARS_PER_TOKEN = 4.2  # roughly, for English prose with Llama-style tokenizers


def roleplay_history(seed: int, tokens: int) -> str:
    rng = random.Random(seed)
    turns, size = [], 0
    while size < tokens * CHARS_PER_TOKEN:
        side, name = rng.choice([("user", "Anon"), ("assistant", "Greta")])
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 40)))
        turn = f'\n\n::::{side}:{name}: "{words.capitalize()}," {name} said.'
        turns.append(turn)
        size += len(turn)
    return "".join(turns)


def new_turn(seed: int, tokens: int) -> str:
    rng = random.Random(seed + 10_000)
    words = " ".join(rng.choice(WORDS) for _ in range(int(tokens * CHARS_PER_TOKEN / 6)))
    return f'\n\n::::user:Anon: "{words.capitalize()}?"\n\n::::assistant:Greta:'


def roleplay_prompt(seed: int, history_tokens: int, new_tokens: int) -> str:
    """A chat of about `history_tokens`, then a new user turn of about `new_tokens`, ending on the reply's label."""
    return roleplay_history(seed, history_tokens) + new_turn(seed, new_tokens)


@dataclass(frozen=True)
class Target:
    """A server under test: where it is, the model name it serves, and the body fields only it gets (ours: a
    seed; a peer may refuse or crash on fields it does not know)."""

    url: str
    model: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Shape:
    """The prompts and replies of a run: a history of about `history_tokens`, a new turn of about `new_tokens`,
    `max_tokens` generated (end of sequence ignored)."""

    history_tokens: int = 2000
    new_tokens: int = 50
    max_tokens: int = 64
    prefix: str = ""  # text put before every prompt (a peer that adds no BOS gets the BOS text here)

    def prompt(self, seed: int) -> str:
        return self.prefix + roleplay_prompt(seed, self.history_tokens, self.new_tokens)


@dataclass
class StreamResult:
    ttft: float
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0  # from the final usage event when the server sends one; else the chunks
    text: str = ""


async def stream_once(client: httpx.AsyncClient, target: Target, prompt: str, max_tokens: int) -> StreamResult:
    body = {
        "model": target.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 1.0,
        "min_p": 0.05,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
        **target.extra,
    }
    started = time.perf_counter()
    result, last = None, None
    async with client.stream("POST", f"{target.url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("usage") and result is not None:
                result.tokens = event["usage"]["completion_tokens"]
            text = event["choices"][0]["text"] if event.get("choices") else ""
            if not text:
                continue
            now = time.perf_counter()
            if result is None:
                result = StreamResult(ttft=now - started)
            else:
                result.gaps.append(now - last)
            result.chunks += 1
            result.text += text
            last = now
    return result or StreamResult(ttft=time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def concurrency_level(
    client: httpx.AsyncClient, target: Target, shape: Shape, streams: int, base_seed: int
) -> dict:
    prompts = [shape.prompt(base_seed + i) for i in range(streams)]
    started = time.perf_counter()
    results = await asyncio.gather(*(stream_once(client, target, p, shape.max_tokens) for p in prompts))
    wall = time.perf_counter() - started
    gaps = [gap for r in results for gap in r.gaps]
    chunks = sum(r.tokens or r.chunks for r in results)
    return {
        "streams": streams,
        "wall_s": round(wall, 3),
        "tokens": chunks,
        "throughput_tok_s": round(chunks / wall, 2),
        "ttft_median_s": round(statistics.median(r.ttft for r in results), 3),
        "itl_median_ms": round(percentile(gaps, 0.5) * 1000, 1),
        "itl_p90_ms": round(percentile(gaps, 0.9) * 1000, 1),
        "itl_p99_ms": round(percentile(gaps, 0.99) * 1000, 1),
    }


async def follow_up_and_swipe(client: httpx.AsyncClient, target: Target, shape: Shape, seed: int) -> dict:
    prompt = shape.prompt(seed)
    cold = await stream_once(client, target, prompt, shape.max_tokens)
    swipe = await stream_once(client, target, prompt, shape.max_tokens)
    follow = prompt + " " + cold.text + new_turn(seed + 1, shape.new_tokens)
    follow_up = await stream_once(client, target, follow, shape.max_tokens)
    return {
        "cold_ttft_s": round(cold.ttft, 3),
        "follow_up_ttft_s": round(follow_up.ttft, 3),
        "swipe_ttft_s": round(swipe.ttft, 3),
        "follow_up_ratio": round(follow_up.ttft / cold.ttft, 3),
        "swipe_ratio": round(swipe.ttft / cold.ttft, 3),
    }


async def run(args) -> dict:
    target = Target(args.url, args.model, {"seed": 1})
    shape = Shape(args.history_tokens, args.new_tokens, args.max_tokens)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), headers=args.headers) as client:
        levels = []
        for index, streams in enumerate(args.concurrency):
            levels.append(await concurrency_level(client, target, shape, streams, base_seed=1000 * (index + 1)))
            row = levels[-1]
            print(
                f"{args.label:>10} {streams:>7} {row['throughput_tok_s']:>10} {row['ttft_median_s']:>9} "
                f"{row['itl_median_ms']:>8} {row['itl_p90_ms']:>8} {row['itl_p99_ms']:>8}",
                flush=True,
            )
        reuse = await follow_up_and_swipe(client, target, shape, seed=99)
        print(
            f"{args.label:>10} cold TTFT {reuse['cold_ttft_s']} s, follow-up {reuse['follow_up_ttft_s']} s "
            f"({reuse['follow_up_ratio']}x), swipe {reuse['swipe_ttft_s']} s ({reuse['swipe_ratio']}x)"
        )
    return {"label": args.label, "url": args.url, "levels": levels, "reuse": reuse}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--label", default="ours")
    parser.add_argument("--model", default="default")
    parser.add_argument("--api-key")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    print(f"{'server':>10} {'streams':>7} {'tok/s':>10} {'TTFT s':>9} {'ITL p50':>8} {'p90':>8} {'p99':>8}")
    result = asyncio.run(run(args))
    out = args.out or Path(__file__).parent / "results" / f"serve-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
