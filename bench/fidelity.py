"""How much a quantization changes *your* model: teacher-forced over a roleplay in the `::::` format, its next-token
distributions against the unquantized model's.

    .venv/bin/python -m bench.fidelity [--model M] [--adapter A] [--dtype auto] [--device auto]
                                       [--quantization int8] [--kv-cache-dtype auto|int8|fp8]
                                       [--text chat.txt|chat.jsonl] [--window 4096]

The same model flags as the server (the adapter merged first, then quantized, as the server does it, its
load-time check included). With an 8-bit `--kv-cache-dtype` the compared model reads its keys and values as the
server's 8-bit cache gives them back (its own positions' too, as the server's prefill does). The text:
`bench/data/roleplay_sample.txt` (written for this project), a text of your own in the `::::` format, or a
SillyTavern chat export (`.jsonl`). Printed, for every token and for the first tokens after each label (where a
speaker's voice starts): mean and 99th-percentile KL divergence (nats), top-1 agreement, and the perplexity
ratio (quantized / unquantized). How to read it: KL near 0.001 and top-1 above 98 % is a change you will not see
in a story; a perplexity ratio above 1.01 is a measurable loss; the after-label numbers are the ones that decide
how a character sounds.
"""

import argparse
import json
import re
from pathlib import Path

import torch

from server.engine.forward.quantization import next_token_kl, quantize
from server.engine.kv.kv_format import KV_CACHE_DTYPES, KvFormat
from server.engine.model.loader import load
from server.engine.options import INT4_GROUP_SIZES, QUANTIZATIONS, ModelSpec

SAMPLE = Path(__file__).parent / "data" / "roleplay_sample.txt"
LABEL = re.compile(r"::::(?:user|assistant):(?:[^:\n]*:)? ")  # with or without a name
AFTER_LABEL = 8  # tokens after a label that count as "where the voice starts"


def chat_text(path: Path) -> str:
    """A `::::` text as it is, or a SillyTavern `.jsonl` chat export rendered in the format."""
    if path.suffix != ".jsonl":
        return path.read_text()
    turns = []
    for line in path.read_text().splitlines()[1:]:  # the first line is the chat's metadata
        message = json.loads(line)
        if message.get("is_system"):
            continue
        side = "user" if message.get("is_user") else "assistant"
        turns.append(f"::::{side}:{message['name']}: {message['mes'].strip()}")
    return "::::user: Let's engage together in a roleplay.\n\n" + "\n\n".join(turns)


def tokens_and_label_starts(tokenizer, text: str) -> tuple[list[int], set[int]]:
    """The text's ids, and the indices of the first AFTER_LABEL tokens after each label (from the token holding
    the label's space: tokenizers join it to the next word)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [match.end() for match in LABEL.finditer(text)]
    starts: set[int] = set()
    for end in ends:
        first = next((i for i, (_, stop) in enumerate(encoded["offset_mapping"]) if stop > end), None)
        if first is not None:
            starts.update(range(first, first + AFTER_LABEL))
    return list(encoded["input_ids"]), starts


@torch.inference_mode()
def next_token_logprobs(
    model, windows: list[list[int]], device: torch.device, kv_format: KvFormat | None = None
) -> torch.Tensor:
    """Log-probabilities [tokens, vocab] (float32, on the CPU) of each window's next tokens, windows concatenated;
    with `kv_format`, keys and values read as that cache stores them."""
    parts = []
    for window in windows:
        cache = kv_format.new_cache(model.config) if kv_format else None
        inputs = torch.tensor([window], device=device)
        logits = model(input_ids=inputs, cache=cache, use_cache=cache is not None).logits[0, :-1]
        parts.append(logits.float().log_softmax(-1).cpu())
    return torch.cat(parts)


def compare(reference: torch.Tensor, other: torch.Tensor, targets: torch.Tensor) -> dict:
    kl = next_token_kl(reference, other).clamp(min=0)
    reference_nll = -reference.gather(1, targets[:, None]).mean()
    other_nll = -other.gather(1, targets[:, None]).mean()
    return {
        "tokens": len(targets),
        "mean_kl": round(float(kl.mean()), 6),
        "p99_kl": round(float(kl.quantile(0.99)), 6),
        "top1_agreement": round(float((reference.argmax(-1) == other.argmax(-1)).float().mean()), 4),
        "perplexity_ratio": round(float(torch.exp(other_nll - reference_nll)), 5),
    }


def measure(
    spec: ModelSpec, quantization: str, text: str, window: int, group_size: int = 128, kv_cache_dtype: str = "auto"
) -> dict:
    loaded = load(spec)
    ids, label_starts = tokens_and_label_starts(loaded.vocabulary.tokenizer, text)
    size = min(window, loaded.context_length) - 1  # each window starts with the BOS
    windows = [loaded.vocabulary.with_bos(ids[start : start + size]) for start in range(0, len(ids), size)]
    # Which text token each predicted position is: window w's position p predicts token w*size + p.
    targets = torch.tensor([token for window in windows for token in window[1:]])
    reference = next_token_logprobs(loaded.model, windows, loaded.device)
    if quantization != "none":
        quantize(loaded.model, loaded.vocabulary, quantization, group_size)
    kv_format = KvFormat(kv_cache_dtype, loaded.dtype)
    other = next_token_logprobs(loaded.model, windows, loaded.device, kv_format if kv_format.quantized else None)
    after_label = torch.tensor(sorted(index for index in label_starts if index < len(targets)))
    return {
        "quantization": quantization,
        "int4_group_size": group_size if quantization == "int4" else None,
        "kv_cache_dtype": kv_cache_dtype,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "all_tokens": compare(reference, other, targets),
        "after_labels": compare(reference[after_label], other[after_label], targets[after_label]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--adapter")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="int8")
    parser.add_argument("--int4-group-size", type=int, choices=INT4_GROUP_SIZES, default=128)
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    parser.add_argument("--text", type=Path, default=SAMPLE)
    parser.add_argument("--window", type=int, default=4096, help="tokens per teacher-forced window")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    spec = ModelSpec(model=args.model, adapter=args.adapter, dtype=args.dtype, device=args.device)
    text = chat_text(args.text)
    result = measure(spec, args.quantization, text, args.window, args.int4_group_size, args.kv_cache_dtype)
    print(f"{'tokens':>14} {'count':>6} {'mean KL':>9} {'p99 KL':>9} {'top-1':>7} {'ppl ratio':>9}")
    for scope in ("all_tokens", "after_labels"):
        row = result[scope]
        print(
            f"{scope:>14} {row['tokens']:>6} {row['mean_kl']:>9} {row['p99_kl']:>9} "
            f"{row['top1_agreement']:>7.2%} {row['perplexity_ratio']:>9}"
        )
    name = f"int4-g{args.int4_group_size}" if args.quantization == "int4" else args.quantization
    name += f"-kv-{args.kv_cache_dtype}" if args.kv_cache_dtype != "auto" else ""
    out = args.out or Path(__file__).parent / "results" / f"fidelity-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
