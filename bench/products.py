"""The linear layers' products on the engine's runner with the CPU kernels: on the kernels' weight panels (the
server's default, `panels`) or on oneDNN's packed weights (`onednn`, what it did before), one process,
interleaved rounds, medians: a decode step of 1 and of 8 rows at ~2,000 tokens of context, and the prefill of a
128-token and of a ~2,000-token prompt.

    .venv/bin/python -m bench.products [--rounds 5] [--history-tokens 2000] [--out bench/results/products.json]
"""

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest import mock

import torch
from transformers import PreTrainedModel

from bench.serve import roleplay_prompt
from server.engine.forward import fused_layers, serving_model
from server.engine.forward.runner import ModelRunner
from server.engine.model.loader import load
from server.engine.options import ModelSpec

STREAMS = 8


def runner(model: PreTrainedModel, panels: bool, context: int) -> ModelRunner:
    if panels:
        return ModelRunner(copy.deepcopy(model), torch.device("cpu"), 0, context_length=context)
    with (
        mock.patch.object(serving_model, "panel_linear_layers", lambda module: 0),
        mock.patch.object(fused_layers, "panelable", lambda linears: False),
    ):
        return ModelRunner(copy.deepcopy(model), torch.device("cpu"), 0, context_length=context)


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def prefill(runner: ModelRunner, prompt: list[int]) -> float:
    runner.start_prefill("prompt", prompt)
    elapsed = seconds(lambda: runner.prefill_chunk("prompt", len(prompt)))
    runner.release("prompt")
    return elapsed


@torch.inference_mode()
def measure(runners: dict[str, ModelRunner], prompt: list[int], rounds: int) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = {}
    for runner in runners.values():
        for row in range(STREAMS):
            runner.start_prefill(str(row), prompt)
            runner.prefill_chunk(str(row), len(prompt))
    for _ in range(rounds):
        for way, runner in runners.items():
            steps = [(str(row), 5) for row in range(STREAMS)]
            times.setdefault((way, f"decode {STREAMS} rows"), []).append(seconds(partial(runner.decode, steps)))
            times.setdefault((way, "prefill 128"), []).append(prefill(runner, prompt[:128]))
            times.setdefault((way, f"prefill {len(prompt)}"), []).append(prefill(runner, prompt))
    for runner in runners.values():
        for row in range(1, STREAMS):
            runner.release(str(row))
    for _ in range(2 * rounds):
        for way, runner in runners.items():
            times.setdefault((way, "decode 1 row"), []).append(seconds(partial(runner.decode, [("0", 5)])))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "products.json")
    args = parser.parse_args()

    loaded = load(ModelSpec(dtype="auto"))
    prompt = loaded.vocabulary.encode(roleplay_prompt(3, args.history_tokens, 50), add_bos=True)
    context = len(prompt) + 4 * args.rounds + 8
    runners = {"onednn": runner(loaded.model, False, context), "panels": runner(loaded.model, True, context)}
    times = measure(runners, prompt, args.rounds)
    rows = []
    print(f"{'case':>16} {'onednn ms':>10} {'panels ms':>10} {'faster by':>9}")
    for case in dict.fromkeys(case for _, case in times):
        before, after = (statistics.median(times[(way, case)]) * 1000 for way in runners)
        rows.append({"case": case, "onednn_ms": round(before, 1), "panels_ms": round(after, 1)})
        print(f"{case:>16} {before:>10.1f} {after:>10.1f} {before / after:>8.2f}x", flush=True)
    result = {"dtype": str(loaded.dtype).removeprefix("torch."), "threads": torch.get_num_threads(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
