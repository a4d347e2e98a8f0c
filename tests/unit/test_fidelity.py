"""`bench.fidelity`: the model against itself is exact zeros; the measures are KL, top-1 and perplexity ratio;
labels and SillyTavern exports are read as the format has them."""

import json
import math

import pytest
import torch

from bench.fidelity import SAMPLE, chat_text, compare, measure, tokens_and_label_starts
from server.engine.options import ModelSpec
from tests import tokenizers


def test_the_unquantized_model_against_itself_is_exact():
    result = measure(ModelSpec(), "none", SAMPLE.read_text()[:1500], window=256)
    for scope in ("all_tokens", "after_labels"):
        row = result[scope]
        assert row["tokens"] > 0
        assert (row["mean_kl"], row["p99_kl"], row["top1_agreement"], row["perplexity_ratio"]) == (0, 0, 1, 1)


def test_compare_measures_kl_top1_and_perplexity():
    reference = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    other = torch.tensor([[0.5, 0.5], [0.1, 0.9]]).log()
    targets = torch.tensor([0, 0])
    row = compare(reference, other, targets)
    kl = 0.9 * math.log(9) + 0.1 * math.log(1 / 9)
    assert row["mean_kl"] == pytest.approx(kl / 2, abs=1e-6)
    assert row["top1_agreement"] == 0.5  # the tie's arg-max is the first in both; the second row flips
    flipped = compare(reference[1:], other[1:], targets[1:])
    assert flipped["top1_agreement"] == 0.0
    assert flipped["perplexity_ratio"] == pytest.approx(9.0, rel=1e-4)  # -log 0.1 against -log 0.9


def test_the_tokens_after_each_label_are_found():
    tokenizer = tokenizers.smollm2()
    text = '::::user: Hello there.\n\n::::assistant:Mira: "Hi," she said.'
    ids, starts = tokens_and_label_starts(tokenizer, text)
    first, second = [i for i in sorted(starts) if i - 1 not in starts]
    assert tokenizer.decode(ids[first:]).startswith(" Hello")
    assert tokenizer.decode(ids[second:]).startswith(' "Hi,')


def test_a_sillytavern_export_becomes_the_format(tmp_path):
    lines = [
        {"user_name": "Anon", "character_name": "Mira"},
        {"name": "Mira", "is_user": False, "mes": "Mira waved. "},
        {"name": "System", "is_user": False, "is_system": True, "mes": "(hidden)"},
        {"name": "Anon", "is_user": True, "mes": "Anon waved back."},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    assert chat_text(path) == (
        "::::user: Let's engage together in a roleplay.\n\n"
        "::::assistant:Mira: Mira waved.\n\n::::user:Anon: Anon waved back."
    )


def test_an_8_bit_kv_cache_changes_the_model_a_little_and_is_measured():
    """int8 keys and values with a scale per token and head: within 1 % perplexity (the issue's bound)."""
    result = measure(ModelSpec(), "none", SAMPLE.read_text()[:1500], window=256, kv_cache_dtype="int8")
    row = result["all_tokens"]
    assert result["kv_cache_dtype"] == "int8"
    assert 0 < row["mean_kl"] < 0.01 and row["top1_agreement"] > 0.9 and abs(row["perplexity_ratio"] - 1) < 0.01
