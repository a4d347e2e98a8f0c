"""Long roleplays past the context: what `--cache-reuse N` costs in fidelity (drift) and saves in time.

Drift, in this process on the embedded model: a chat driven past a context of `--drift-context` tokens the way
SillyTavern trims it (story string kept, oldest messages dropped), `--drift-turns` turns. For each turn, the
first `--steps` next-token distributions (teacher-forced on the exact path's greedy tokens) of a runner that
reuses its cache with N in {64, 256}, against an exact re-prefill of the same prompt: mean and largest KL
divergence, top-1 agreement.

Speed, on real servers (exact and `--cache-reuse 256`, one run, turns interleaved): time to first token of
`--turns` consecutive turns past the model's whole context (8,192 for the embedded model), and the prompt tokens
each prefilled. For Llama-3.1-8B at a 12k context: the tokens a turn prefills, counted with its tokenizer.

    .venv/bin/python -m bench.long_chat [--drift-context 2048] [--drift-turns 10] [--steps 8] [--turns 20]
                                        [--model M] [--adapter A] [--dtype D] [--skip-drift | --skip-speed]
                                        [--out FILE]

`--model`, `--adapter` and `--dtype` (as the server's) measure the drift on your own weights; the speed part
always runs the embedded model.

Prints tables and writes JSON (default bench/results/long_chat.json).
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch

from server.engine.forward.runner import ModelRunner
from server.engine.model.loader import LoadedModel, load
from server.engine.options import ModelSpec
from tests import tokenizers
from tests.integration.long_chat import trimmed_prompt
from tests.integration.server_process import ROOT, ServerProcess

REUSE = (64, 256)
REPLY = 64


def fits_in(count: Callable[[str], int], context: int) -> Callable[[str], bool]:
    return lambda prompt: count(prompt) + REPLY <= context


def distributions(runner: ModelRunner, name: str, prompt: list[int], reuse: int, forced: list[int] | None, steps: int):
    """Log-probabilities of the first `steps` tokens after `prompt`, teacher-forced on `forced` (None: on the
    runner's own greedy choices), and the tokens fed."""
    runner.start_prefill(name, prompt, reuse)
    while (logits := runner.prefill_chunk(name, len(prompt))) is None:
        pass
    found = [torch.log_softmax(logits.float(), -1)]
    fed: list[int] = []
    for step in range(steps - 1):
        token = int(found[-1].argmax()) if forced is None else forced[step]
        fed.append(token)
        found.append(torch.log_softmax(runner.decode([(name, token)])[0].float(), -1))
    runner.release(name, [*prompt, *fed])  # every token fed is in the cache
    return found, fed


@torch.inference_mode()
def drift(loaded: LoadedModel, context: int, turns: int, steps: int) -> dict:
    vocabulary = loaded.vocabulary

    def count(text: str) -> int:
        return len(vocabulary.encode(text, add_bos=True))

    exact = ModelRunner(loaded.model, loaded.device, prefix_budget_tokens=0, context_length=context)
    reusing = {n: ModelRunner(loaded.model, loaded.device, 1 << 20, context_length=context) for n in REUSE}
    measured: dict[int, dict[str, list[float]]] = {n: {"kl": [], "top1": [], "moved": []} for n in REUSE}
    first_turn = 1
    while count(trimmed_prompt(first_turn, lambda _: True)) + REPLY <= context:
        first_turn += 1  # the first turn whose whole chat no longer fits
    for turn in range(first_turn, first_turn + turns):
        prompt = vocabulary.encode(trimmed_prompt(turn, fits_in(count, context)), add_bos=True)
        reference, greedy = distributions(exact, f"exact-{turn}", prompt, 0, None, steps)
        for n, runner in reusing.items():
            before = runner.shifted_tokens
            mine, _ = distributions(runner, f"reuse-{turn}", prompt, n, greedy, steps)
            measured[n]["moved"].append((runner.shifted_tokens - before) / len(prompt))
            for ref, got in zip(reference, mine, strict=True):
                kl = float(torch.sum(ref.exp() * (ref - got)))
                measured[n]["kl"].append(kl)
                measured[n]["top1"].append(float(ref.argmax() == got.argmax()))
    return {
        str(n): {
            "mean_kl": statistics.fmean(m["kl"]),
            "max_kl": max(m["kl"]),
            "top1_agreement": statistics.fmean(m["top1"]),
            "moved_share": statistics.fmean(m["moved"]),
        }
        for n, m in measured.items()
    }


def speed(turns: int) -> dict:
    exact = ServerProcess("--prefix-cache-mb", "2048").wait_ready()
    reusing = ServerProcess("--prefix-cache-mb", "2048", "--cache-reuse", "256").wait_ready()
    try:
        context = httpx.get(f"{exact.url}/v1/models").json()["data"][0]["max_model_len"]
        count = tokenizers.smollm2()

        def fits(prompt: str) -> bool:
            return len(count.encode(prompt)) + 1 + REPLY <= context

        first_turn = 1
        while fits(trimmed_prompt(first_turn, lambda _: True)):
            first_turn += 10
        rows = {"exact": [], "reuse_256": []}
        for turn in range(first_turn, first_turn + turns):
            prompt = trimmed_prompt(turn, fits)
            for name, server in (("exact", exact), ("reuse_256", reusing)):
                before = server.health()["prefilled_tokens"]
                started = time.perf_counter()
                answer = httpx.post(
                    f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=600
                )
                assert answer.status_code == 200, answer.text
                seconds = time.perf_counter() - started
                prefilled = server.settled_health()["prefilled_tokens"] - before
                rows[name].append({"ttft_s": seconds, "prefilled": prefilled})
    finally:
        exact.stop()
        reusing.stop()
    return {
        name: {
            "context": context,
            "median_ttft_s": statistics.median(r["ttft_s"] for r in measured[1:]),
            "mean_prefilled": statistics.fmean(r["prefilled"] for r in measured[1:]),
            "turns": measured,
        }
        for name, measured in rows.items()
    }


def llama_12k(turns: int) -> dict:
    """Prompt tokens a turn prefills for Llama-3.1-8B at a 12,288 context, exact against cache reuse."""
    tokenizer = tokenizers.llama3()

    def count(text: str) -> int:
        return len(tokenizer.encode(text))

    fits = fits_in(count, 12288)
    first_turn = 1
    while fits(trimmed_prompt(first_turn, lambda _: True)):
        first_turn += 10
    story = count(trimmed_prompt(0, lambda _: False).rsplit("\n\n", 1)[0])
    exact, reuse = [], []
    previous: str | None = None
    for turn in range(first_turn, first_turn + turns):
        prompt = trimmed_prompt(turn, fits)
        exact.append(count(prompt) - story)  # only the story string is a shared prefix
        if previous is not None:
            # Reused: the messages both prompts hold; prefilled: what is new since the previous turn.
            kept = prompt.split("\n\n::::")[1:]
            new = [part for part in kept if f"::::{part}" not in previous]
            reuse.append(sum(count("\n\n::::" + part) for part in new))
        previous = prompt
    return {"exact_tokens_per_turn": statistics.fmean(exact), "reuse_tokens_per_turn": statistics.fmean(reuse)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drift-context", type=int, default=2048)
    parser.add_argument("--drift-turns", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--model", help="as the server's --model (default: the embedded model)")
    parser.add_argument("--adapter", help="as the server's --adapter")
    parser.add_argument("--dtype", default="float32", help="as the server's --dtype")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-drift", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "long_chat.json")
    args = parser.parse_args()
    result: dict = {"machine": platform.processor() or platform.machine(), "args": vars(args) | {"out": None}}
    if not args.skip_drift:
        loaded = load(ModelSpec(model=args.model, adapter=args.adapter, dtype=args.dtype))
        result["drift"] = drift(loaded, args.drift_context, args.drift_turns, args.steps)
        print(f"drift, context {args.drift_context}, {args.drift_turns} turns x {args.steps} tokens, vs re-prefill")
        print(f"{'reuse N':>8} {'moved share':>12} {'mean KL':>10} {'max KL':>10} {'top-1 agree':>12}")
        for n, row in result["drift"].items():
            print(
                f"{n:>8} {row['moved_share']:12.1%} {row['mean_kl']:10.4f} {row['max_kl']:10.4f} "
                f"{row['top1_agreement']:12.1%}"
            )
    result["llama_12k"] = llama_12k(args.turns)
    print(f"Llama-3.1-8B, 12k context, prompt tokens prefilled per turn: {result['llama_12k']}")
    if not args.skip_speed:
        result["speed"] = speed(args.turns)
        print(f"{'server':>10} {'context':>8} {'median TTFT s':>14} {'prefilled per turn':>19}")
        for name, row in result["speed"].items():
            print(f"{name:>10} {row['context']:8} {row['median_ttft_s']:14.2f} {row['mean_prefilled']:19.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
