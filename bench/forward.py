"""The engine's forward on this machine, in one process, interleaved: a decode step of the engine (the bucketed
cache, its layout and cache writes) against the bare model forward on transformers' own cache, for each way of
running the model (`plain`: linear layers as loaded; `packed`: on oneDNN-packed weights; `kernels`: packed and
the engine's CPU kernels, the server's default on the CPU; `int8` / `int4` / `fp8`: that and `--quantization int8` /
`int4` / `fp8`; `kv-int8` / `kv-fp8`: that and `--kv-cache-dtype int8` / `fp8`, the bare forward then on the
model's dtype) and each intra-op thread count; and the prefill of one prompt.

    .venv/bin/python -m bench.forward [--streams 1 8] [--threads 1 2] [--weights plain packed kernels int8 ...]
                                      [--steps 20]
                                      [--history-tokens 2000] [--dtype auto] [--out bench/results/forward.json]

Every stream decodes the same prompt (so the bare forward needs no padding: both read the same positions). Each
round runs one step of every (weights, threads, engine|bare) case in turn, so that the machine's noise falls on
all of them alike; medians over the rounds. "overhead" is how much longer the engine's step takes than the bare
forward of the same model: the engine's own per-step work.
"""

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import DynamicCache, PreTrainedModel

from bench.serve import roleplay_prompt
from server.engine.forward.module_swap import decoder_layers
from server.engine.forward.quantization import quantize_layers
from server.engine.forward.runner import ModelRunner
from server.engine.model.loader import load
from server.engine.options import ModelSpec, default_cache_dir


class Way(NamedTuple):
    """How the model runs."""

    packed: bool  # linear layers packed for oneDNN (--cpu-weights)
    quantization: str | None  # the decoder layers' (--quantization)
    kv: str  # the KV cache's dtype (--kv-cache-dtype)
    kernels: bool  # the engine's CPU kernels (--compile auto)


WEIGHTS = {
    "plain": Way(False, None, "auto", False),
    "packed": Way(True, None, "auto", False),
    "kernels": Way(True, None, "auto", True),  # the server's default on the CPU
    "int8": Way(True, "int8", "auto", True),
    "int4": Way(True, "int4", "auto", True),
    "fp8": Way(True, "fp8", "auto", True),  # torch's CPU kernel: what `bench.fidelity` runs; the server refuses it
    "kv-int8": Way(True, None, "int8", True),
    "kv-fp8": Way(True, None, "fp8", True),
}


class Case:
    """One way of running the model, as the engine (a ModelRunner) and bare (the model on its own cache)."""

    def __init__(self, model: PreTrainedModel, way: Way, prompt: list[int], streams: int) -> None:
        device = torch.device("cpu")
        context = len(prompt) + 512
        self.runner = ModelRunner(
            model,
            device,
            0,
            context_length=context,
            packed_weights=way.packed,
            kv_cache_dtype=way.kv,
            kernel_cache=default_cache_dir() if way.kernels else None,
        )
        started = time.perf_counter()
        self.tokens = {}
        for stream in range(streams):
            self.runner.start_prefill(str(stream), prompt)
            logits = self.runner.prefill_chunk(str(stream), len(prompt))
            assert logits is not None
            self.tokens[str(stream)] = int(logits.argmax())
            if stream == 0:
                self.prefill_s = time.perf_counter() - started
        self.model = model
        self.cache = DynamicCache(config=model.config)
        ids = torch.tensor([prompt] * streams)
        logits = model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        self.bare_token = logits.argmax(-1, keepdim=True)

    def engine_step(self) -> None:
        logits = self.runner.decode(list(self.tokens.items()))
        self.tokens = dict(zip(self.tokens, logits.argmax(-1).tolist(), strict=True))

    def bare_step(self) -> None:
        logits = self.model(input_ids=self.bare_token, cache=self.cache, use_cache=True, logits_to_keep=1).logits
        self.bare_token = logits[:, -1].argmax(-1, keepdim=True)
        self.bare_token.tolist()  # the engine reads its tokens back too


def timed(step: Callable[[], None], threads: int) -> float:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


@torch.inference_mode()
def measure(args: argparse.Namespace, model: PreTrainedModel, prompt: list[int], streams: int) -> list[dict]:
    cases = {}
    for label in args.weights:
        way = WEIGHTS[label]
        variant = copy.deepcopy(model)
        if way.quantization is not None:  # int4: groups of 128 where the width allows (64 on the embedded model's 576)
            quantize_layers(decoder_layers(variant), way.quantization, 128)
        cases[label] = Case(variant, way, prompt, streams)
    times: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(args.steps):
        for label, case in cases.items():
            for threads in args.threads:
                times.setdefault((label, threads, "engine"), []).append(timed(case.engine_step, threads))
                times.setdefault((label, threads, "bare"), []).append(timed(case.bare_step, threads))
    rows = []
    for label, case in cases.items():
        for threads in args.threads:
            engine = statistics.median(times[(label, threads, "engine")]) * 1000
            bare = statistics.median(times[(label, threads, "bare")]) * 1000
            rows.append(
                {
                    "streams": streams,
                    "weights": label,
                    "threads": threads,
                    "engine_step_ms": round(engine, 1),
                    "bare_step_ms": round(bare, 1),
                    "overhead_pct": round((engine / bare - 1) * 100, 1),
                    "prefill_s": round(case.prefill_s, 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--weights", nargs="+", choices=list(WEIGHTS), default=list(WEIGHTS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--dtype", default="auto", help="as the server's --dtype (the same default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "forward.json")
    args = parser.parse_args()

    loaded = load(ModelSpec(dtype=args.dtype))
    prompt = loaded.vocabulary.encode(roleplay_prompt(1000, args.history_tokens, 50), add_bos=True)
    header = ("streams", "weights", "threads", "engine ms", "bare ms", "overhead", "prefill s")
    print(" ".join(f"{name:>9}" for name in header))
    rows = []
    for streams in args.streams:
        for row in measure(args, loaded.model, prompt, streams):
            rows.append(row)
            print(
                f"{row['streams']:>9} {row['weights']:>9} {row['threads']:>9} {row['engine_step_ms']:>9} "
                f"{row['bare_step_ms']:>9} {row['overhead_pct']:>8}% {row['prefill_s']:>9}",
                flush=True,
            )
    result = {"dtype": str(loaded.dtype).removeprefix("torch."), "prompt_tokens": len(prompt), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
