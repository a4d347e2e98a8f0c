"""Batched decode over the width-bucketed cache, eager and padded (the captured layout), gives each sequence what it
would get alone; a captured step that fails or differs is caught."""

import pytest
import torch

from server.engine.forward.decode_graphs import CaptureFailed, DecodeGraphs
from server.engine.forward.runner import ModelRunner
from server.engine.forward.self_check import captured_decode_problem
from server.engine.kv import bucket_cache
from tests.toy import prefill, tiny_llama


def greedy_alone(model, prompt: list[int], steps: int) -> list[int]:
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    tokens = [int(prefill(runner, "x", prompt).argmax())]
    for _ in range(steps - 1):
        tokens.append(int(runner.decode([("x", tokens[-1])])[0].argmax()))
    return tokens


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "padded"])
@pytest.mark.parametrize("first_width", [bucket_cache.FIRST_WIDTH, 8])
@torch.inference_mode()
def test_rows_of_different_lengths_joining_and_leaving_mid_batch(monkeypatch, first_width, captured):
    """With buckets of 8, 12, 20, 28, ... positions the rows move up a bucket every few steps, as long chats do;
    with the wide ones, five rows share a bucket whose capacity steps 1, 2, 3, 4, 6 and back down as they come and
    go, a leaving row's slot taken by the bucket's last one."""
    monkeypatch.setattr(bucket_cache, "FIRST_WIDTH", first_width)
    monkeypatch.setattr(bucket_cache, "WIDTH_MULTIPLE", 4 if first_width == 8 else bucket_cache.WIDTH_MULTIPLE)
    model = tiny_llama()
    prompts = {"a": list(range(1, 30)), "b": list(range(5, 12)), "c": [3, 9, 27, 17, 50], "d": [8, 8, 2]}
    prompts["e"] = list(range(40, 60))
    expected = {name: greedy_alone(model, prompt, 12) for name, prompt in prompts.items()}
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, captured=captured)
    got = {"a": [int(prefill(runner, "a", prompts["a"]).argmax())]}
    got["b"] = [int(prefill(runner, "b", prompts["b"]).argmax())]
    for step in range(20):
        for name, joins_at in (("c", 4), ("d", 5), ("e", 5)):  # joining while the others are mid-way
            if step == joins_at:
                got[name] = [int(prefill(runner, name, prompts[name]).argmax())]
        if not (live := [name for name in got if len(got[name]) < 12]):
            break
        logits = runner.decode([(name, got[name][-1]) for name in live])
        for name, row in zip(live, logits, strict=True):
            got[name].append(int(row.argmax()))
            if len(got[name]) == 12:
                runner.release(name)
    assert got == expected
    assert runner.running_caches == 0 and runner.batch_tokens == 0


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "padded"])
@torch.inference_mode()
def test_backing_off_equals_a_cold_start_on_the_shorter_history(captured):
    model = tiny_llama()
    runner = ModelRunner(model, torch.device("cpu"), captured=captured, prefix_budget_tokens=0)
    prompt = list(range(1, 20))
    other = list(range(30, 36))
    prefill(runner, "other", other)
    tokens = [int(prefill(runner, "x", prompt).argmax())]
    for _ in range(5):
        logits = runner.decode([("other", 1), ("x", tokens[-1])])
        tokens.append(int(logits[1].argmax()))
    # Back off to 2 generated tokens: the cache keeps prompt + tokens[:1]; tokens[1] is fed again.
    runner.truncate("x", len(prompt) + 1)
    again = runner.decode([("other", 1), ("x", tokens[1])])[1]
    cold = prefill(ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0), "y", prompt + tokens[:2])
    torch.testing.assert_close(again, cold, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "padded"])
@torch.inference_mode()
def test_forked_samples_continue_like_their_source(captured):
    model = tiny_llama()
    runner = ModelRunner(model, torch.device("cpu"), captured=captured, prefix_budget_tokens=0)
    first = prefill(runner, "s0", list(range(1, 15)))
    runner.fork("s0", "s1")
    token = int(first.argmax())
    logits = runner.decode([("s0", token), ("s1", token)])
    torch.testing.assert_close(logits[0], logits[1])


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "padded"])
@torch.inference_mode()
def test_finished_rows_feed_the_prefix_cache(captured):
    model = tiny_llama()
    runner = ModelRunner(model, torch.device("cpu"), captured=captured, prefix_budget_tokens=1000)
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
def test_a_failed_capture_runs_that_step_and_the_next_ones_eager(monkeypatch):
    model = tiny_llama()
    prompt = list(range(1, 20))
    expected = greedy_alone(model, prompt, 6)

    def fail(self, batch):
        raise CaptureFailed("capturing the decode step failed: injected")

    monkeypatch.setattr(DecodeGraphs, "run", fail)
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, captured=True)
    tokens = [int(prefill(runner, "x", prompt).argmax())]
    while len(tokens) < 6:
        tokens.append(int(runner.decode([("x", tokens[-1])])[0].argmax()))
    assert tokens == expected and runner.decode_mode == "eager"


@torch.inference_mode()
def test_the_self_check_passes_on_the_padded_step_and_leaves_nothing_behind():
    runner = ModelRunner(tiny_llama(), torch.device("cpu"), prefix_budget_tokens=1000, captured=True)
    assert captured_decode_problem(runner, 64, torch.float32, context=512) is None
    assert runner.decode_mode == "captured" and runner.running_caches == 0 and len(runner.prefix_cache) == 0


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        (lambda logits: logits + 0.01, "logits differ by 0.01"),
        (lambda logits: logits.roll(1, dims=-1), "logits differ"),
        (lambda logits: logits * float("nan"), "logits differ by nan"),
    ],
)
@torch.inference_mode()
def test_the_self_check_finds_a_captured_step_that_differs(monkeypatch, fault, problem):
    original = DecodeGraphs.run
    monkeypatch.setattr(DecodeGraphs, "run", lambda self, batch: fault(original(self, batch)))
    runner = ModelRunner(tiny_llama(), torch.device("cpu"), prefix_budget_tokens=0, captured=True)
    found = captured_decode_problem(runner, 64, torch.float32, context=512)
    assert found is not None and found.startswith("step 0: " + problem)
    assert runner.running_caches == 0


@torch.inference_mode()
def test_the_self_check_reports_a_capture_that_fails(monkeypatch):
    def fail(self, batch):
        raise CaptureFailed("capturing the decode step failed: injected")

    monkeypatch.setattr(DecodeGraphs, "run", fail)
    runner = ModelRunner(tiny_llama(), torch.device("cpu"), prefix_budget_tokens=0, captured=True)
    assert captured_decode_problem(runner, 64, torch.float32, context=512) == (
        "capturing the decode step failed: injected"
    )
    assert runner.running_caches == 0
