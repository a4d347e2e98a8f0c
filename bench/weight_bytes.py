"""What `--quantization` does to Llama-3.1-8B's memory and to a decode step's floor, measured on real modules.

One decoder layer of Llama-3.1-8B's real shapes is built with random bfloat16 weights, quantized as the server
quantizes it, and its parameters and buffers are counted; 32 of them plus the embedding table, the final norm and
the LM head (which stay bfloat16) give the model's bytes. A decode step reads every weight but the embedding
table once, plus its rows' KV cache: the bytes over an H100's 3.0 TB/s is the step's floor (bench/roofline.py has
the launches and the KV layout on top of that), for one chat of 2,048 tokens and for 32 of them. Then each
`--kv-cache-dtype`'s bytes per token and per chat of 8,192 tokens.

    .venv/bin/python -m bench.weight_bytes [--out bench/results/weight_bytes.json]
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from bench.roofline import H100_BYTES_PER_SECOND, LLAMA_3_1_8B, kv_token_bytes
from server.engine.forward.quantization import quantize_layers
from server.engine.kv.kv_format import KV_CACHE_DTYPES
from server.engine.model.loader import model_bytes
from server.engine.options import QUANTIZATIONS

SCENARIOS = {"1x2k": 1, "32x2k": 32}
CHAT_TOKENS = 2048


@torch.inference_mode()
def layer_bytes(config: LlamaConfig, quantization: str) -> int:
    """One real decoder layer's bytes in bf16, its linear layers quantized as the server does it."""
    layer = LlamaDecoderLayer(config, layer_idx=0).to(torch.bfloat16)
    if quantization != "none":
        quantize_layers(layer, quantization)  # int4 in the default groups of 128
    return model_bytes(layer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "weight_bytes.json")
    args = parser.parse_args()
    config = LlamaConfig(**LLAMA_3_1_8B)
    hidden, vocab = config.hidden_size, config.vocab_size
    bf16 = torch.bfloat16.itemsize
    embedding, head, norm = vocab * hidden * bf16, vocab * hidden * bf16, hidden * bf16
    kv = kv_token_bytes(LLAMA_3_1_8B) * CHAT_TOKENS
    rows = []
    print(f"{'quantization':>12} {'decoder GB':>10} {'+ head GB':>9} {'model GB':>9} {'1x2k ms':>8} {'32x2k ms':>8}")
    for quantization in QUANTIZATIONS:
        decoder = config.num_hidden_layers * layer_bytes(config, quantization)
        read = decoder + norm + head  # a step reads every weight but the embedding table
        floors = {name: (read + chats * kv) / H100_BYTES_PER_SECOND * 1000 for name, chats in SCENARIOS.items()}
        rows.append(
            {
                "quantization": quantization,
                "decoder_bytes": decoder,
                "decoder_and_head_bytes": decoder + norm + head,
                "model_bytes": decoder + norm + head + embedding,
                "h100_floor_ms": {name: round(ms, 3) for name, ms in floors.items()},
            }
        )
        print(
            f"{quantization:>12} {decoder / 1e9:>10.2f} {(decoder + head) / 1e9:>9.2f} "
            f"{(decoder + head + embedding) / 1e9:>9.2f} {floors['1x2k']:>8.2f} {floors['32x2k']:>8.2f}"
        )
    kv_rows = []
    print(f"\n{'KV dtype':>8} {'bytes/token':>11} {'8k chat MB':>10}")
    for kv_cache_dtype in KV_CACHE_DTYPES:
        per_token = kv_token_bytes(LLAMA_3_1_8B, kv_cache_dtype)
        kv_rows.append({"kv_cache_dtype": kv_cache_dtype, "bytes_per_token": per_token})
        print(f"{kv_cache_dtype:>8} {per_token:>11,} {per_token * 8192 / 1e6:>10.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"chat_tokens": CHAT_TOKENS, "rows": rows, "kv": kv_rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
