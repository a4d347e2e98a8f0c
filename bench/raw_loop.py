"""The floor for `bench/serve.py`: the bare model loop on the same model and prompt shape, no server, no
sampling chain (arg-max), transformers' KV cache and nothing else; the model set up exactly as the engine sets it
up (its attention, and on the CPU its stacked projections, packed weights and compiled kernels: server/engine/
forward/serving_model.py), with torch's default threads as the engine has them. The kernels' decode attention
needs the engine's bucket cache and their chunk attention the engine's mixed step (forward/mixed_step.py), so on
transformers' cache and forward this loop's attention stays SDPA: `bench/forward.py`
compares the engine's step with this bare forward, `bench/stream_floor.py` the HTTP stream with the engine's step.

    .venv/bin/python -m bench.raw_loop [--history-tokens 2000] [--new-tokens 50] [--max-tokens 64] [--streams N]
                                       [--dtype auto|float32|bfloat16] [--cpu-weights packed|plain]
                                       [--compile auto|off]

With `--streams N`, N prompts of the same length decode as one batch (no padding): how much faster N streams can
go than one on this machine at best, the ceiling for the server's aggregate throughput.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from bench.serve import roleplay_prompt
from server.engine.forward.serving_model import prepare_for_serving
from server.engine.model.loader import load
from server.engine.options import ModelSpec, default_cache_dir


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--dtype", default="auto", help="as the server's --dtype (the same default)")
    parser.add_argument("--cpu-weights", choices=["packed", "plain"], default="packed", help="as the server's")
    parser.add_argument("--compile", choices=["auto", "off"], default="auto", help="as the server's")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    loaded = load(ModelSpec(dtype=args.dtype))
    model = loaded.model
    kernel_cache = default_cache_dir() if args.compile == "auto" else None
    prepare_for_serving(model, loaded.device, packed_weights=args.cpu_weights == "packed", kernel_cache=kernel_cache)
    prompt = roleplay_prompt(1000, args.history_tokens, args.new_tokens)
    ids = torch.tensor([loaded.vocabulary.encode(prompt, add_bos=True)] * args.streams)
    cache = DynamicCache(config=model.config)
    started = time.perf_counter()
    logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    token = logits.argmax(-1, keepdim=True)
    ttft = time.perf_counter() - started
    gaps = []
    for _ in range(args.max_tokens - 1):
        step = time.perf_counter()
        logits = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        token = logits.argmax(-1, keepdim=True)
        token.tolist()  # the server reads each token back too
        gaps.append(time.perf_counter() - step)
    result = {
        "label": "raw-loop",
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "streams": args.streams,
        "prompt_tokens": ids.shape[1],
        "ttft_s": round(ttft, 3),
        "itl_median_ms": round(statistics.median(gaps) * 1000, 1),
        "throughput_tok_s": round(args.streams * args.max_tokens / (ttft + sum(gaps)), 2),
        "decode_tok_s": round(args.streams * len(gaps) / sum(gaps), 2),
    }
    print(json.dumps(result))
    suffix = f"-{args.streams}-streams" if args.streams > 1 else ""
    out = args.out or Path(__file__).parent / "results" / f"raw-loop{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
