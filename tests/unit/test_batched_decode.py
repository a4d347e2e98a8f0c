"""Batched decode over the width-bucketed cache (and the static one) gives each sequence what it would get alone."""

import pytest
import torch

from server.engine import bucket_cache
from server.engine.runner import ModelRunner
from server.engine.static_batch_cache import StaticBatchCache
from tests.toy import prefill, tiny_llama


def greedy_alone(model, prompt: list[int], steps: int) -> list[int]:
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    tokens = [int(prefill(runner, "x", prompt).argmax())]
    for _ in range(steps - 1):
        tokens.append(int(runner.decode([("x", tokens[-1])])[0].argmax()))
    return tokens


@pytest.mark.parametrize("first_width", [bucket_cache.FIRST_WIDTH, 8])
@torch.inference_mode()
def test_rows_of_different_lengths_joining_and_leaving_mid_batch(monkeypatch, first_width):
    """With buckets of 8, 12, 20, 28, ... positions the rows move up a bucket every few steps, as long chats do."""
    monkeypatch.setattr(bucket_cache, "FIRST_WIDTH", first_width)
    monkeypatch.setattr(bucket_cache, "WIDTH_MULTIPLE", 4 if first_width == 8 else bucket_cache.WIDTH_MULTIPLE)
    model = tiny_llama()
    prompts = {"a": list(range(1, 30)), "b": list(range(5, 12)), "c": [3, 9, 27, 17, 50]}
    expected = {name: greedy_alone(model, prompt, 12) for name, prompt in prompts.items()}
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    got = {"a": [int(prefill(runner, "a", prompts["a"]).argmax())]}
    got["b"] = [int(prefill(runner, "b", prompts["b"]).argmax())]
    for step in range(11):
        if step == 4:  # "c" joins while the others are mid-way
            got["c"] = [int(prefill(runner, "c", prompts["c"]).argmax())]
        live = [name for name in got if len(got[name]) < 12]
        logits = runner.decode([(name, got[name][-1]) for name in live])
        for name, row in zip(live, logits, strict=True):
            got[name].append(int(row.argmax()))
        for name in live:
            if len(got[name]) == 12:
                runner.release(name)
    while len(got["c"]) < 12:
        got["c"].append(int(runner.decode([("c", got["c"][-1])])[0].argmax()))
    assert got == expected
    runner.release("c")
    assert runner.running_caches == 0


@torch.inference_mode()
def test_backing_off_equals_a_cold_start_on_the_shorter_history():
    model = tiny_llama()
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    prompt = list(range(1, 20))
    other = list(range(30, 36))
    prefill(runner, "other", other)
    tokens = [int(prefill(runner, "x", prompt).argmax())]
    for _ in range(5):
        logits = runner.decode([("other", 1), ("x", tokens[-1])])
        tokens.append(int(logits[1].argmax()))
    # Back off to 2 generated tokens: the cache keeps prompt + tokens[:1]; tokens[1] is fed again.
    runner.crop("x", len(prompt) + 1)
    again = runner.decode([("other", 1), ("x", tokens[1])])[1]
    cold = prefill(ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0), "y", prompt + tokens[:2])
    torch.testing.assert_close(again, cold, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_forked_samples_continue_like_their_source():
    model = tiny_llama()
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    first = prefill(runner, "s0", list(range(1, 15)))
    runner.fork("s0", "s1")
    token = int(first.argmax())
    logits = runner.decode([("s0", token), ("s1", token)])
    torch.testing.assert_close(logits[0], logits[1])


@torch.inference_mode()
def test_finished_rows_feed_the_prefix_cache():
    model = tiny_llama()
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=1000)
    prompt = list(range(1, 25))
    prefill(runner, "a", list(range(40, 50)))
    cold = prefill(runner, "b", prompt)
    token = int(cold.argmax())
    runner.decode([("a", 1), ("b", token)])
    runner.release("b", [*prompt, token])
    warm = prefill(runner, "c", [*prompt, token, 7])
    reference = prefill(ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0), "d", [*prompt, token, 7])
    assert runner.reused_tokens == len(prompt) + 1
    torch.testing.assert_close(warm, reference, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_the_static_cache_gives_what_each_sequence_gets_alone(monkeypatch):
    """Pre-allocated buffers: a longer prompt joining shifts the rows, a full buffer is compacted, free slots are
    masked."""
    moves = []
    for name in ("_shift", "_compact"):
        original = getattr(StaticBatchCache, name)
        monkeypatch.setattr(
            StaticBatchCache, name, lambda self, *a, _o=original, _n=name: (moves.append(_n), _o(self, *a))[1]
        )
    model = tiny_llama()
    prompts = {"a": list(range(1, 30)), "b": list(range(5, 12)), "c": [3, 9, 27, 17, 50], "d": list(range(20, 55))}
    steps = 14
    expected = {name: greedy_alone(model, prompt, steps) for name, prompt in prompts.items()}
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, static=(3, 52))
    got = {"b": [int(prefill(runner, "b", prompts["b"]).argmax())]}
    got["a"] = [int(prefill(runner, "a", prompts["a"]).argmax())]  # longer than the write column: rows shift
    for step in range(40):
        if step == 3:
            got["c"] = [int(prefill(runner, "c", prompts["c"]).argmax())]
        if step == 14:  # "a" and "b" are done: "d" joins, and the buffer soon needs compacting
            got["d"] = [int(prefill(runner, "d", prompts["d"]).argmax())]
        live = [name for name in got if len(got[name]) < steps]
        if not live:
            break
        logits = runner.decode([(name, got[name][-1]) for name in live])
        for name, row in zip(live, logits, strict=True):
            got[name].append(int(row.argmax()))
            if len(got[name]) == steps:
                runner.release(name)
    assert got == expected
    assert runner.running_caches == 0
    assert {"_shift", "_compact"} <= set(moves)


@torch.inference_mode()
def test_a_static_row_whose_back_off_holes_fill_the_width_is_packed_not_failed():
    """Each decode-and-back-off leaves a hole; once the row with holes spans the whole buffer, compaction closes
    them and the row goes on as if they had never been there."""
    model = tiny_llama()
    prompt, other = list(range(1, 9)), [40, 41, 42]
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, static=(2, 16))
    prefill(runner, "x", prompt)
    prefill(runner, "other", other)
    other_tokens = [5]
    for _ in range(12):  # more steps than free columns
        logits = runner.decode([("x", 7), ("other", other_tokens[-1])])
        other_tokens.append(int(logits[1].argmax()))
        runner.crop("x", len(prompt))
    logits = runner.decode([("x", 7), ("other", other_tokens[-1])])
    alone = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    torch.testing.assert_close(logits[0], prefill(alone, "y", [*prompt, 7]), atol=1e-5, rtol=1e-5)
    other_alone = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    prefill(other_alone, "o", other)
    expected = [5]
    while len(expected) < len(other_tokens):
        expected.append(int(other_alone.decode([("o", expected[-1])])[0].argmax()))
    assert other_tokens == expected


@torch.inference_mode()
def test_the_compiled_static_decode_step_is_one_graph_with_the_same_tokens():
    """What makes the step capturable as CUDA graphs: fixed shapes and inputs, so one compiled graph serves every
    step, rows joining and leaving included (here compiled for CPU)."""
    from torch._dynamo.utils import counters

    model = tiny_llama()
    prompts = {"a": list(range(1, 20)), "b": [3, 4, 5], "c": list(range(30, 40))}
    expected = {name: greedy_alone(model, prompt, 8) for name, prompt in prompts.items()}
    torch._dynamo.reset()
    counters.clear()
    runner = ModelRunner(model, torch.device("cpu"), 0, static=(2, 40), compile_decode=True)
    got = {name: [int(prefill(runner, name, prompts[name]).argmax())] for name in ("a", "b")}
    while any(len(tokens) < 8 for tokens in got.values()):
        live = [name for name in got if len(got[name]) < 8]
        for name, row in zip(live, runner.decode([(n, got[n][-1]) for n in live]), strict=True):
            got[name].append(int(row.argmax()))
            if len(got[name]) == 8:
                runner.release(name)
                if "c" not in got:  # a new row takes the freed slot
                    got["c"] = [int(prefill(runner, "c", prompts["c"]).argmax())]
    assert got == expected
    assert counters["stats"]["unique_graphs"] == 1
