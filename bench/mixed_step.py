"""A prompt read in chunks while other streams decode, on the engine's path (a ModelRunner as the server sets it
up on the CPU): each step's decode forward and chunk forward apart (`apart`, what the engine did before), or the
two in one forward (`mixed`, forward/mixed_step.py). Interleaved rounds, medians of a step's time.

    .venv/bin/python -m bench.mixed_step [--rows 7] [--chunk 512] [--rounds 3] [--history-tokens 2000]
                                         [--out bench/results/mixed-step.json]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.serve import roleplay_prompt
from server.engine.forward.runner import ModelRunner
from server.engine.model.loader import load
from server.engine.options import ModelSpec

READING = "reading"


def read_beside(
    runner: ModelRunner, prompt: list[int], steps: list[tuple[str, int]], chunk: int, mixed: bool
) -> list[float]:
    """Reads `prompt` `chunk` tokens a step while every row of `steps` decodes; each step's seconds."""
    runner.start_prefill(READING, prompt)
    seconds = []
    done = None
    while done is None:
        started = time.perf_counter()
        if mixed:
            _, (done,) = runner.mixed_step(steps, [(READING, chunk)])
        else:
            runner.decode(steps)
            done = runner.prefill_chunk(READING, chunk)
        seconds.append(time.perf_counter() - started)
    runner.release(READING)
    return seconds


def decode_seconds(runner: ModelRunner, steps: list[tuple[str, int]]) -> float:
    started = time.perf_counter()
    runner.decode(steps)
    return time.perf_counter() - started


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=7, help="streams decoding while the prompt is read")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mixed-step.json")
    args = parser.parse_args()

    loaded = load(ModelSpec(dtype="auto"))
    prompts = [
        loaded.vocabulary.encode(roleplay_prompt(seed, args.history_tokens, 50), add_bos=True)
        for seed in range(args.rows + 1)
    ]
    context = max(map(len, prompts)) + 512  # room for the rows' decode steps
    runner = ModelRunner(loaded.model, torch.device("cpu"), 0, context_length=context)
    assert runner.mixes, "mixed steps need the engine's CPU kernels"
    for seed, prompt in enumerate(prompts[1:]):
        runner.start_prefill(f"row {seed}", prompt)
        while runner.prefill_chunk(f"row {seed}", 2048) is None:
            pass
    steps = [(f"row {seed}", 1) for seed in range(args.rows)]
    times: dict[str, list[float]] = {"apart": [], "mixed": []}
    decodes = []
    read_beside(runner, prompts[0], steps, args.chunk, mixed=True)  # warm-up
    for _ in range(args.rounds):
        for way in times:
            times[way].extend(read_beside(runner, prompts[0], steps, args.chunk, mixed=way == "mixed"))
            decodes.append(decode_seconds(runner, steps))
    apart, mixed = (statistics.median(times[way]) for way in ("apart", "mixed"))
    decode = statistics.median(decodes)
    print(
        f"{args.rows} rows decoding at ~{len(prompts[1])} tokens, "
        f"a {len(prompts[0])}-token prompt in {args.chunk}-token chunks"
    )
    print(f"{'way':>6} {'step ms':>8} {'vs apart':>8}")
    for way, median in (("apart", apart), ("mixed", mixed)):
        print(f"{way:>6} {median * 1e3:>8.1f} {median / apart:>8.3f}")
    print(f"the decode forward alone: {decode * 1e3:.1f} ms; saved a step: {(apart - mixed) * 1e3:.1f} ms")
    result = {
        "rows": args.rows,
        "chunk": args.chunk,
        "prompt_tokens": len(prompts[0]),
        "threads": torch.get_num_threads(),
        "step_ms": {"apart": round(apart * 1e3, 1), "mixed": round(mixed * 1e3, 1)},
        "decode_alone_ms": round(decode * 1e3, 1),
        "mixed_vs_apart": round(mixed / apart, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
