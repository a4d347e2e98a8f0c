"""Chats past the context on /v1/chat/completions: the server's chunked trimming (`context_overflow: "trim"`)
against dropping one oldest message at a time until the chat fits (what a client such as SillyTavern does).

Two servers on the embedded model with the same flags (a short context, so that each turn's re-reading takes
seconds, not a minute; the prefix cache on, cache reuse off), one per policy, turns interleaved: for each of
`--turns` consecutive turns of a chat already past the context, the time to the first token of a `max_tokens: 1`
request and the prompt tokens it prefilled (from `/health`).

    .venv/bin/python -m bench.trimming [--context 2048] [--turns 20] [--out FILE]

Prints a table and writes JSON (default bench/results/trimming.json).
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import httpx

from tests.integration.server_process import ROOT, ServerProcess

REPLY = 64
TEXT = (
    'The wind rose over the pass and the snow came sideways. "We walk until the cairn at the bend," said one of '
    "them, checking the map again. Neither of them looked back at the trail they had left behind."
)
SETTING = {
    "characters": [
        {"name": "Nanashi", "description": "A wandering swordswoman who speaks little and notices everything."},
        {"name": "Anon", "description": "A cartographer lost in the mountains."},
    ],
    "scenario": "A mountain pass in winter; a storm is coming.",
}


def chat(turns: int) -> list[dict]:
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "name": "Anon" if i % 2 == 0 else "Nanashi",
            "content": f"Turn {i}. {TEXT}",
        }
        for i in range(turns)
    ]


def one_at_a_time(server: ServerProcess, messages: list[dict], context: int) -> list[dict]:
    """The newest messages that fit with the reply, found as a client does: drop the oldest until it fits."""
    kept = list(messages)
    while len(kept) > 1:
        rendered = httpx.post(f"{server.url}/v1/chat/render", json={**SETTING, "messages": kept}, timeout=60).json()
        if len(rendered["token_ids"]) + REPLY <= context:
            break
        kept.pop(0)
    return kept


def first_token(server: ServerProcess, body: dict) -> dict:
    before = server.health()["prefilled_tokens"]
    started = time.perf_counter()
    answer = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "max_tokens": 1}, timeout=600)
    assert answer.status_code == 200, answer.text
    seconds = time.perf_counter() - started
    return {
        "ttft_s": seconds,
        "prefilled": server.settled_health()["prefilled_tokens"] - before,
        "trimmed": answer.json().get("trimmed_messages"),
    }


def measure(context: int, turns: int) -> dict:
    flags = ("--max-model-len", str(context), "--prefix-cache-mb", "1024")
    chunked, single = ServerProcess(*flags).wait_ready(), ServerProcess(*flags).wait_ready()
    rows: dict[str, list[dict]] = {"chunked": [], "one_at_a_time": []}
    try:
        first = 1
        while (
            len(
                httpx.post(f"{chunked.url}/v1/chat/render", json={**SETTING, "messages": chat(first)}).json()[
                    "token_ids"
                ]
            )
            + REPLY
            <= context
        ):
            first += 5
        for turn in range(first, first + turns):
            messages = chat(turn)
            trim = {**SETTING, "messages": messages, "context_overflow": "trim", "max_tokens": REPLY}
            rows["chunked"].append(first_token(chunked, trim))
            kept = one_at_a_time(single, messages, context)
            rows["one_at_a_time"].append(first_token(single, {**SETTING, "messages": kept}))
            rows["one_at_a_time"][-1]["trimmed"] = len(messages) - len(kept)
    finally:
        chunked.stop()
        single.stop()
    return {
        name: {
            "median_ttft_s": statistics.median(r["ttft_s"] for r in measured[1:]),
            "mean_prefilled": statistics.fmean(r["prefilled"] for r in measured[1:]),
            "turns": measured,
        }
        for name, measured in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trimming.json")
    args = parser.parse_args()
    result = {
        "machine": platform.processor() or platform.machine(),
        "context": args.context,
        **measure(args.context, args.turns),
    }
    print(
        f"{args.turns} consecutive turns past a {args.context}-token context (medians and means over all but the first)"
    )
    print(f"{'policy':<16}{'median TTFT':>14}{'prefilled/turn':>16}  messages left out, turn by turn")
    for name in ("chunked", "one_at_a_time"):
        row = result[name]
        cuts = " ".join(str(t["trimmed"]) for t in row["turns"])
        print(f"{name:<16}{row['median_ttft_s']:>13.2f}s{row['mean_prefilled']:>16.0f}  {cuts}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
