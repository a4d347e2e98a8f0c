"""Our server against a peer (vLLM, llama.cpp's server, ...) on the same machine, one run, interleaved A/B: the
same prompts, token counts and sampling on both, at each concurrency level, then the follow-up and swipe
scenario; a table of both and the ratio, and JSON.

    .venv/bin/python -m bench.versus --peer-url http://127.0.0.1:8900 --peer-model smol [--peer-label vllm]
                                     [--url http://127.0.0.1:8765] [--concurrency 1 8] [--rounds 2]
                                     [--variant chunk2048="--prefill-chunk 2048"]

Without `--url` our server is started here on the embedded model, with `--stop-strings []` (ours always stops at
`::::`, a peer does not: both must generate every token asked for); `--server-arg` adds flags. Each `--variant
NAME="FLAGS"` starts one more server of ours with those flags added (on the next port), measured in the same
rounds and compared with the peer as well.
The peer runs in its own environment; for vLLM's CPU build on this 2-core box (bench/RESULTS.md):

    VLLM_CPU_NUM_OF_RESERVED_CPU=0 python -m vllm.entrypoints.openai.api_server \\
        --model ~/.cache/rpserve/SmolLM2-135M-Instruct --served-model-name smol --dtype float32 --port 8900

Both get the model's BOS text at the start of every prompt (our server keeps one BOS; a peer whose tokenizer adds
none would otherwise see a prompt without it), `ignore_eos`, temperature 1 and min-p 0.05; ours gets DRY off
(its model-card preset turns DRY on) and the peer gets no `seed` (one crashes vLLM's CPU engine). Each round runs
every level on both, the order alternating between rounds; the medians over rounds are reported. The prompts are
new in every run (`--seed`, random unless given), so that neither server's prefix cache holds them from an
earlier run.
"""

import argparse
import asyncio
import json
import random
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import httpx
from transformers import AutoTokenizer

from bench.load import start_server
from bench.serve import Shape, Target, concurrency_level, follow_up_and_swipe
from server.engine.model.default_model import embedded_model_folder
from server.engine.options import default_cache_dir

METRICS = ("ttft_median_s", "itl_median_ms", "throughput_tok_s")
# Ours is better when the ratio ours/peer is below 1 for times and above 1 for throughput.
HIGHER_IS_BETTER = {"throughput_tok_s"}


async def measure(args: argparse.Namespace, targets: dict[str, Target], shape: Shape) -> dict:
    levels: dict[str, dict[int, list[dict]]] = {label: {n: [] for n in args.concurrency} for label in targets}
    reuse: dict[str, list[dict]] = {label: [] for label in targets}
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout)) as client:
        for round_index in range(args.rounds):
            order = list(targets) if round_index % 2 == 0 else list(reversed(targets))
            for index, streams in enumerate(args.concurrency):
                # The same prompts for both servers within a round, new ones each round (no cached prefixes).
                seed = args.seed + 10_000 * (round_index + 1) + 1000 * index
                for label in order:
                    row = await concurrency_level(client, targets[label], shape, streams, seed)
                    levels[label][streams].append(row)
                    print(f"round {round_index + 1}: {label:>6} {streams} streams {row}", flush=True)
            for label in order:
                reuse[label].append(await follow_up_and_swipe(client, targets[label], shape, args.seed + round_index))
    return {
        label: {
            "levels": {n: _medians(rows) for n, rows in levels[label].items()},
            "reuse": _medians(reuse[label]),
        }
        for label in targets
    }


def _medians(rows: list[dict]) -> dict:
    return {key: round(statistics.median(row[key] for row in rows), 3) for key in rows[0]}


def report(result: dict, ours: str, peer: str, concurrency: list[int]) -> list[dict]:
    table = []
    print(f"\n{'streams':>7} {'metric':>16} {ours:>10} {peer:>10} {'ours/peer':>10}")
    for streams in concurrency:
        for metric in METRICS:
            mine, theirs = result[ours]["levels"][streams][metric], result[peer]["levels"][streams][metric]
            ratio = round(mine / theirs, 3) if theirs else float("nan")
            better = ratio >= 1 if metric in HIGHER_IS_BETTER else ratio <= 1
            table.append({"streams": streams, "metric": metric, "ours": ours, ours: mine, peer: theirs, "ratio": ratio})
            print(f"{streams:>7} {metric:>16} {mine:>10} {theirs:>10} {ratio:>10} {'' if better else '(worse)'}")
    for metric in ("follow_up_ratio", "swipe_ratio"):
        print(f"{'':>7} {metric:>16} {result[ours]['reuse'][metric]:>10} {result[peer]['reuse'][metric]:>10}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="our running server; without it one is started on the embedded model")
    parser.add_argument("--port", type=int, default=8765, help="port for the server this script starts")
    parser.add_argument("--server-arg", action="append", default=[], help="a flag for the server started here")
    parser.add_argument(
        "--variant", action="append", default=[], help='NAME="FLAGS": one more server of ours, with these flags added'
    )
    parser.add_argument("--model", default="default", help="the model name ours is asked for")
    parser.add_argument("--peer-url", required=True)
    parser.add_argument("--peer-model", required=True, help="the model name the peer serves")
    parser.add_argument("--peer-label", default="vllm")
    parser.add_argument("--tokenizer", help="where to read the BOS text (default: the embedded model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30), help="of the prompts' text")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or embedded_model_folder(default_cache_dir()))
    shape = Shape(args.history_tokens, args.new_tokens, args.max_tokens, prefix=tokenizer.bos_token or "")
    servers: list[subprocess.Popen] = []
    ours = {"ours": args.url}
    try:
        if args.url is None:
            servers.append(start_server(args.port, ["--stop-strings", "[]", *args.server_arg]))
            ours["ours"] = f"http://127.0.0.1:{args.port}"
        for port, variant in enumerate(args.variant, start=args.port + 1):
            name, _, flags = variant.partition("=")
            servers.append(start_server(port, ["--stop-strings", "[]", *args.server_arg, *shlex.split(flags)]))
            ours[name] = f"http://127.0.0.1:{port}"
        targets = {label: Target(url, args.model, {"dry_multiplier": 0}) for label, url in ours.items()}
        targets[args.peer_label] = Target(args.peer_url, args.peer_model)
        result = asyncio.run(measure(args, targets, shape))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
    table = [row for label in ours for row in report(result, label, args.peer_label, args.concurrency)]
    out = args.out or Path(__file__).parent / "results" / f"versus-{args.peer_label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": sys.argv[1:], "seed": args.seed, "results": result, "table": table}
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
