"""The prefill of one prompt on the engine's path (a ModelRunner, as the server configures it on the CPU), read
whole or in chunks of the sizes a step reads while other requests decode, with each chunk's attention done as the
engine does it (`kernel`: a mixed step of the chunk alone, its attention on the chunk kernel) or through the
model's own forward as the engine did before: `split` (torch's flash attention, the past without a mask and the
chunk causal, merged) or `masked` (one masked SDPA call). Interleaved rounds, medians.

    .venv/bin/python -m bench.prefill_chunks [--chunks 512 1024] [--rounds 3] [--history-tokens 2000]
                                             [--out bench/results/prefill-chunks.json]
"""

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import torch

from bench.serve import roleplay_prompt
from server.engine.forward import attention
from server.engine.forward.runner import ModelRunner
from server.engine.model.loader import load
from server.engine.options import ModelSpec


def prefill_seconds(runner: ModelRunner, prompt: list[int], chunk: int, way: str) -> float:
    """Reads `prompt` from nothing, `chunk` tokens a forward; the time of the forwards."""
    runner.start_prefill("bench", prompt)
    started = time.perf_counter()
    with contextlib.ExitStack() as patches:
        if way != "kernel":
            patches.enter_context(mock.patch.object(ModelRunner, "mixes", new=False))
        if way == "masked":
            patches.enter_context(mock.patch.object(attention, "causal_past", lambda mask: None))
        while runner.prefill_chunk("bench", chunk) is None:
            pass
    elapsed = time.perf_counter() - started
    runner.release("bench")
    return elapsed


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prefill-chunks.json")
    args = parser.parse_args()

    loaded = load(ModelSpec(dtype="auto"))
    prompt = loaded.vocabulary.encode(roleplay_prompt(7, args.history_tokens, 50), add_bos=True)
    runner = ModelRunner(loaded.model, torch.device("cpu"), 0, context_length=len(prompt) + 1)
    cases = [(way, len(prompt)) for way in ("kernel", "split")]
    cases += [(way, chunk) for chunk in args.chunks for way in ("kernel", "split", "masked")]
    times: dict[tuple[str, int], list[float]] = {}
    prefill_seconds(runner, prompt, args.chunks[0], "kernel")  # warm-up
    for _ in range(args.rounds):
        for way, chunk in cases:
            times.setdefault((way, chunk), []).append(prefill_seconds(runner, prompt, chunk, way))
    whole = statistics.median(times[("split", len(prompt))])
    rows = []
    print(f"{'chunk':>7} {'attention':>9} {'prefill s':>9} {'vs whole, split':>15}")
    for (way, chunk), seconds in times.items():
        median = statistics.median(seconds)
        rows.append(
            {
                "chunk": chunk,
                "attention": way,
                "prefill_s": round(median, 3),
                "vs_whole_split": round(median / whole, 3),
            }
        )
        print(f"{chunk:>7} {way:>9} {median:>9.3f} {median / whole:>15.2f}", flush=True)
    result = {"prompt_tokens": len(prompt), "threads": torch.get_num_threads(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
