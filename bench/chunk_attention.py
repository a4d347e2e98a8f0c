"""A prompt chunk's attention alone, one layer of the embedded model's shape (9 query heads, 3 key/value heads, 64
wide): the engine's chunk kernel (kernels/chunk_attention.cpp) against torch's CPU flash attention as the engine
called it before (`attention_after_past`: after cached positions, two calls merged; from nothing, one causal
call). Interleaved, medians; the rate counts the score and value products' multiply-adds (2 flops each).

    .venv/bin/python -m bench.chunk_attention [--repeats 9] [--out bench/results/chunk-attention.json]
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from server.engine.forward.attention import attention_after_past
from server.engine.forward.cpu_kernels import load_cpu_kernels
from server.engine.options import default_cache_dir

HEADS, KV_HEADS, DIM = 9, 3, 64
CASES = [(512, 0), (512, 1536), (512, 3584), (2048, 0)]  # (chunk, cached positions before it)


def flash(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int) -> torch.Tensor:
    if past:
        return attention_after_past(query, keys, values, past, DIM**-0.5)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, keys, values, 0.0, True, scale=DIM**-0.5)[
        0
    ]


def kernel(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int) -> torch.Tensor:
    return torch.ops.rpserve_cpu.chunk_attention(query, keys, values, DIM**-0.5)


def seconds(way: Callable[..., torch.Tensor], *inputs: torch.Tensor | int) -> float:
    started = time.perf_counter()
    way(*inputs)
    return time.perf_counter() - started


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "chunk-attention.json")
    args = parser.parse_args()
    assert load_cpu_kernels(default_cache_dir()), "the chunk kernel needs the engine's CPU kernels"
    rows = []
    print(f"{'chunk':>6} {'past':>5} {'flash ms':>9} {'kernel ms':>9} {'flash GFLOP/s':>13} {'kernel GFLOP/s':>14}")
    for chunk, past in CASES:
        query = torch.randn(1, chunk, HEADS, DIM).transpose(1, 2)  # as the rotary embedding leaves it
        keys, values = (torch.randn(1, KV_HEADS, past + chunk, DIM) for _ in range(2))
        times: dict[str, list[float]] = {"flash": [], "kernel": []}
        for _ in range(args.repeats):
            for name, way in (("flash", flash), ("kernel", kernel)):
                times[name].append(seconds(way, query, keys, values, past))
        flops = 4 * HEADS * DIM * (chunk * past + chunk * (chunk + 1) / 2)
        ms = {name: statistics.median(taken) * 1e3 for name, taken in times.items()}
        rates = {name: flops / value / 1e6 for name, value in ms.items()}
        rows.append({"chunk": chunk, "past": past, "ms": ms, "gflops": rates, "faster_by": ms["flash"] / ms["kernel"]})
        print(
            f"{chunk:>6} {past:>5} {ms['flash']:>9.2f} {ms['kernel']:>9.2f} {rates['flash']:>13.1f}"
            f" {rates['kernel']:>14.1f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
