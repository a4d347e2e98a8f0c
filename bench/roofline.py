"""A roofline for the engine's decode step on Llama-3.1-8B, measurable without a GPU.

For each scenario (streams and their chat lengths) it runs the engine's real decode step (the model runner over
its batch cache, then the sampling chain with the card's settings) on a model with Llama-3.1-8B's structure
(32 layers, 32 query and 8 key/value heads, the real vocabulary, the real RoPE) but narrow widths, on the CPU,
and counts the operators dispatched (each a kernel launch on a GPU; views excluded). Launch counts do not depend
on the widths. Bytes are computed for the real widths in bf16: the weights a step reads, the KV cache it attends
(padding included) and the KV cache allocated, against the real tokens' KV. The predicted H100 step time is
bytes / 3.0 TB/s plus 5 us per launch outside a captured graph; the ceiling is the real bytes (weights + real
tokens' KV) over the bandwidth.

A second table puts the quantizations on the captured path of 1x2k and 32x2k: each `--quantization`'s weight
bytes (codes and scales as the layers store them) and each `--kv-cache-dtype`'s KV traffic. An 8-bit KV cache is
read as its bytes, then written and read again in bfloat16 (attention decodes each bucket's keys and values before
SDPA reads them): it holds half the bytes but moves about 2.5 times as many per step as bfloat16.

Two decode paths over the width-bucketed batch cache side by side: "eager" (`--decode-mode eager`, the default on
CPU: every operator launched, each bucket's attention reading up to its longest row) and "captured" (the default
on CUDA: each bucket padded to its capacity and read over its whole width, the forward one CUDA graph replay; what
runs around it, the copy of the step's inputs into the graph and the sampling chain, still launches). bench/
RESULTS.md also keeps the numbers of the left-padded cache and the full-width static cache the buckets replaced.

    .venv/bin/python -m bench.roofline [--scenarios 1x2k 8-mixed ...] [--out FILE]

Prints a table and writes JSON (default bench/results/roofline.json).
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from bench.sampling import llama3_tokenizer
from sampling import SamplingParams
from sampling.sampler import Sampler
from server.engine.forward.decode_graphs import DecodeGraphs
from server.engine.forward.runner import ModelRunner
from server.engine.kv.bucket_cache import bucket_widths, capacity_for, width_for
from server.engine.kv.kv_format import KV_CACHE_DTYPES, KvFormat
from server.engine.options import QUANTIZATIONS
from server.engine.text.detokenizer import token_bytes_table, token_texts

LLAMA_3_1_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
}
SCENARIOS = {
    "1x2k": [2048],
    "1x12k": [12288],
    "8x2k": [2048] * 8,
    # Roleplay chats run from 500 to 12,000 tokens: about 37k real tokens in all.
    "8-mixed": [500, 1000, 2000, 3000, 4500, 6000, 8000, 12000],
    "32x2k": [2048] * 32,
}
H100_BYTES_PER_SECOND = 3.0e12
LAUNCH_SECONDS = 5e-6
BF16 = 2
# A captured step outside its graph: the copy of its tokens and positions into the graph's input, the replay.
CAPTURED_RUN_LAUNCHES = 2
PATHS = ("eager", "captured")
# Bits per weight, and bytes of scales (and offsets) per output row of each block of input columns.
WEIGHT_BITS = {"none": 16, "int8": 8, "fp8": 8, "int4": 4}
SCALE_BYTES = {"none": 0, "int8": BF16, "fp8": 4, "int4": 2 * BF16}  # int8: bf16 scales; fp8: float32; int4: +offset
MATRIX_EXTRA_BYTES = {"fp8": 4}  # fp8 layers hold the kernel's unit scale, a float32
INT4_GROUP = 128
QUANTIZED_SCENARIOS = ("1x2k", "32x2k")


@dataclass(frozen=True)
class Row:
    scenario: str
    path: str
    quantization: str
    kv_cache_dtype: str
    streams: int
    real_tokens: int
    launches_outside_graph: int  # model step and sampling chain together
    sampling_launches: int
    weight_bytes: int
    kv_read_bytes: int
    kv_allocated_bytes: int
    real_kv_bytes: int
    predicted_ms: float
    ceiling_ms: float

    @property
    def of_ceiling(self) -> float:
        return self.ceiling_ms / self.predicted_ms


def narrow(config: dict, layers: int | None = None) -> LlamaConfig:
    """The same structure with tiny widths: head_dim 2, an 8-wide MLP; the real vocabulary and RoPE."""
    heads = config["num_attention_heads"]
    return LlamaConfig(
        **{
            **config,
            "hidden_size": 2 * heads,
            "intermediate_size": 8,
            "num_hidden_layers": layers or config["num_hidden_layers"],
            "head_dim": 2,
        }
    )


def weight_bytes(config: dict, quantization: str = "none") -> int:
    """The weights one decode step reads: every matrix and norm but the embedding table (a step reads the rows of
    its tokens only); the decoder's matrices as `quantization` stores them, norms and the LM head in bf16."""
    hidden, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    shapes = [(hidden, hidden)] * 2 + [(hidden, kv)] * 2 + [(hidden, inner)] * 2 + [(inner, hidden)]
    per_layer = sum(matrix_bytes(columns, rows, quantization) for columns, rows in shapes) + 2 * hidden * BF16
    return config["num_hidden_layers"] * per_layer + BF16 * (hidden + vocab * hidden)


def matrix_bytes(columns: int, rows: int, quantization: str) -> int:
    """A [rows, columns] weight's codes and its scales: one per row, per group of INT4_GROUP columns for int4."""
    blocks = columns // INT4_GROUP if quantization == "int4" else 1
    codes = columns * rows * WEIGHT_BITS[quantization] // 8
    return codes + rows * blocks * SCALE_BYTES[quantization] + MATRIX_EXTRA_BYTES.get(quantization, 0)


def kv_token_bytes(config: dict, kv_cache_dtype: str = "auto") -> int:
    """A token's KV as the cache stores it."""
    return KvFormat(kv_cache_dtype, torch.bfloat16).bytes_per_token(LlamaConfig(**config))


def kv_step_bytes(config: dict, kv_cache_dtype: str) -> int:
    """Bytes a decode step moves per KV column it attends: the stored bytes, and for an 8-bit cache the bf16
    copy attention decodes them into, written and read."""
    stored = kv_token_bytes(config, kv_cache_dtype)
    return stored if kv_cache_dtype == "auto" else stored + 2 * kv_token_bytes(config)


class LaunchCounter(TorchDispatchMode):
    """Counts dispatched operators that are not views; `paused` stops counting (inside a captured graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.launches = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and not func.is_view:
            self.launches += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def as_replays(counter: LaunchCounter) -> Iterator[None]:
    """Each captured step's forward counts as what it costs outside the graph on CUDA (its input copy and the
    replay); on the CPU the same padded step runs uncaptured, its operators not counted."""
    run = DecodeGraphs.run

    def replay(graphs: DecodeGraphs, batch: object) -> object:
        counter.launches += CAPTURED_RUN_LAUNCHES
        counter.paused = True
        try:
            return run(graphs, batch)
        finally:
            counter.paused = False

    DecodeGraphs.run = replay
    try:
        yield
    finally:
        DecodeGraphs.run = run


def random_cache(config: LlamaConfig, length: int, device: torch.device, dtype: torch.dtype) -> DynamicCache:
    """A prefilled row's cache without running its prompt: random keys and values of the right shapes."""
    cache = DynamicCache(config=config)
    shape = (1, config.num_key_value_heads, length, config.head_dim)
    for layer in range(config.num_hidden_layers):
        cache.update(
            torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype), layer
        )
    return cache


def runner_with_rows(
    model: LlamaForCausalLM, lengths: list[int], captured: bool
) -> tuple[ModelRunner, list[tuple[str, int]]]:
    """A model runner on the model's device whose batch holds rows of `lengths`, and the decode step that advances
    them all. The rows join the batch cache as a finished prefill would, without running their prompts."""
    device = next(model.parameters()).device
    # As on a GPU, where nothing is packed or stacked: the launches counted here are a GPU step's.
    runner = ModelRunner(model, device, prefix_budget_tokens=0, captured=captured, packed_weights=False)
    torch.manual_seed(0)
    for index, length in enumerate(lengths):
        runner._batch.join(f"row{index}", random_cache(model.config, length, device, model.dtype))
    return runner, [(f"row{index}", 1) for index in range(len(lengths))]


def count_step(model: LlamaForCausalLM, lengths: list[int], captured: bool) -> int:
    """Launches of one decode step of rows of `lengths` through the model runner (outside the graph when
    `captured`)."""
    runner, steps = runner_with_rows(model, lengths, captured)
    runner.decode(steps)  # once, so that first-step work (allocations, capture) is not counted
    counter = LaunchCounter()
    with torch.inference_mode(), counter, as_replays(counter):
        runner.decode(steps)
    return counter.launches


def time_step(model: LlamaForCausalLM, lengths: list[int], steps: int, captured: bool) -> float:
    """Milliseconds of one decode step of rows of `lengths` (the median of `steps`), on the model's device."""
    runner, step = runner_with_rows(model, lengths, captured)
    device = next(model.parameters()).device
    timings = []
    with torch.inference_mode():
        for index in range(steps + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            runner.decode(step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= 2:  # the first steps allocate and capture
                timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def count_sampling(sampler_factory: Callable[[int], Sampler], streams: int, history: int) -> int:
    """Launches of the sampling chain for `streams` rows with the card's settings."""
    sampler = sampler_factory(streams)
    generator = torch.Generator().manual_seed(0)
    slots = [
        sampler.add(torch.randint(0, 128000, (history,), generator=generator).tolist(), SamplingParams(seed=i))
        for i in range(streams)
    ]
    logits = torch.randn(streams, sampler.vocab_size, generator=generator)
    sampler.sample(logits, slots)
    counter = LaunchCounter()
    with torch.inference_mode(), counter:
        sampler.sample(logits, slots)
    return counter.launches


def predicted_row(
    scenario: str,
    path: str,
    lengths: list[int],
    launches: int,
    sampling: int,
    config: dict,
    quantization: str = "none",
    kv_cache_dtype: str = "auto",
) -> Row:
    """Bytes and times for the real widths (see `kv_columns`), weights and KV stored as the flags say."""
    per_token = kv_token_bytes(config, kv_cache_dtype)
    streams, real = len(lengths), sum(lengths)
    read_columns, allocated_columns = kv_columns(lengths, path, config["max_position_embeddings"])
    weights = weight_bytes(config, quantization)
    total_launches = launches + sampling
    kv_read = read_columns * kv_step_bytes(config, kv_cache_dtype)
    predicted = (weights + kv_read) / H100_BYTES_PER_SECOND + total_launches * LAUNCH_SECONDS
    ceiling = (weights + real * per_token) / H100_BYTES_PER_SECOND
    return Row(
        scenario=scenario,
        path=path,
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
        streams=streams,
        real_tokens=real,
        launches_outside_graph=total_launches,
        sampling_launches=sampling,
        weight_bytes=weights,
        kv_read_bytes=kv_read,
        kv_allocated_bytes=allocated_columns * per_token,
        real_kv_bytes=real * per_token,
        predicted_ms=predicted * 1000,
        ceiling_ms=ceiling * 1000,
    )


def kv_columns(lengths: list[int], path: str, context: int) -> tuple[int, int]:
    """KV positions a decode step reads and the cache holds. Each bucket holds its capacity for its rows times
    its width; eager, its rows read up to its longest row and the column the step writes; captured, every slot
    reads the whole width."""
    widths = bucket_widths(context)
    buckets: dict[int, list[int]] = {}
    for length in lengths:
        buckets.setdefault(width_for(length + 1, widths), []).append(length)
    allocated = sum(capacity_for(len(members)) * width for width, members in buckets.items())
    if path == "captured":
        return allocated, allocated
    return sum(len(members) * (max(members) + 1) for members in buckets.values()), allocated


def llama3_sampler_factory() -> Callable[[int], Sampler]:
    tokenizer = llama3_tokenizer()
    vocab = token_texts(token_bytes_table(tokenizer, len(tokenizer)), frozenset(tokenizer.all_special_ids))[:128256]

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return lambda slots: Sampler(slots=slots, capacity=16384, vocab=vocab, tokenize=tokenize)


def quantized_rows(captured: list[Row]) -> list[dict]:
    """Each quantization and KV dtype on the captured step of QUANTIZED_SCENARIOS (launches as measured for
    bf16: the step is one replay either way); printed with its speed-up over bf16 weights and KV."""
    table = []
    print(f"\n{'scenario':>8} {'weights':>7} {'KV':>5} {'weights GB':>10} {'KV moved GB':>11} {'predicted ms':>12} "
          f"{'vs bf16':>7} {'ceiling ms':>10}")  # fmt: skip
    for base in [row for row in captured if row.scenario in QUANTIZED_SCENARIOS]:
        lengths = SCENARIOS[base.scenario]
        launches = base.launches_outside_graph - base.sampling_launches
        for quantization in QUANTIZATIONS:
            for kv_cache_dtype in KV_CACHE_DTYPES[:2]:  # fp8 stores the same bytes as int8
                row = predicted_row(base.scenario, "captured", lengths, launches, base.sampling_launches,
                                    LLAMA_3_1_8B, quantization, kv_cache_dtype)  # fmt: skip
                speedup = base.predicted_ms / row.predicted_ms
                table.append(asdict(row) | {"speedup_vs_bf16": round(speedup, 3)})
                print(
                    f"{row.scenario:>8} {quantization:>7} {kv_cache_dtype:>5} {row.weight_bytes / 1e9:>10.2f} "
                    f"{row.kv_read_bytes / 1e9:>11.2f} {row.predicted_ms:>12.2f} {speedup:>6.2f}x "
                    f"{row.ceiling_ms:>10.2f}"
                )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "roofline.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = LlamaForCausalLM(narrow(LLAMA_3_1_8B)).eval()
    sampler_factory = llama3_sampler_factory()
    rows = []
    header = ("scenario", "path", "launches", "of which sampling", "KV read GB", "KV alloc GB", "real KV GB",
              "predicted ms", "ceiling ms", "of ceiling")  # fmt: skip
    print("{:>8} {:>8} {:>9} {:>18} {:>11} {:>12} {:>11} {:>13} {:>11} {:>10}".format(*header))
    for scenario in args.scenarios:
        lengths = SCENARIOS[scenario]
        sampling = count_sampling(sampler_factory, len(lengths), max(lengths))
        for path in PATHS:
            launches = count_step(model, lengths, captured=path == "captured")
            row = predicted_row(scenario, path, lengths, launches, sampling, LLAMA_3_1_8B)
            rows.append(row)
            print(
                f"{scenario:>8} {path:>8} {row.launches_outside_graph:>9} {sampling:>18} "
                f"{row.kv_read_bytes / 1e9:>11.2f} {row.kv_allocated_bytes / 1e9:>12.2f} "
                f"{row.real_kv_bytes / 1e9:>11.2f} {row.predicted_ms:>13.2f} {row.ceiling_ms:>11.2f} "
                f"{row.of_ceiling:>9.0%}"
            )
    quantized = quantized_rows([row for row in rows if row.path == "captured"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "torch": torch.__version__, "h100_bytes_per_second": H100_BYTES_PER_SECOND,
            "launch_seconds": LAUNCH_SECONDS}  # fmt: skip
    args.out.write_text(
        json.dumps(
            {"meta": meta, "rows": [asdict(r) | {"of_ceiling": r.of_ceiling} for r in rows], "quantized": quantized},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
