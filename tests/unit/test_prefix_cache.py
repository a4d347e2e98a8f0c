import torch

from server.engine.forward.runner import ModelRunner
from server.engine.kv.prefix_cache import PrefixCache, common_prefix
from tests.toy import prefill, tiny_llama


def tiny_runner(budget: int = 1000) -> ModelRunner:
    return ModelRunner(tiny_llama(), torch.device("cpu"), prefix_budget_tokens=budget)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix(list(range(1000)), [*range(700), 5]) == 700
    assert common_prefix([], [1]) == 0


@torch.inference_mode()
def test_follow_up_prefills_only_new_tokens_with_the_same_logits():
    runner = tiny_runner()
    first = list(range(1, 40))
    prefill(runner, "a", first)
    runner.release("a", first)
    follow_up = [*first, 50, 51, 52]
    cached = prefill(runner, "b", follow_up)
    assert (runner.reused_tokens, runner.prefilled_tokens) == (39, 39 + 3)
    cold = prefill(tiny_runner(budget=0), "c", follow_up)
    torch.testing.assert_close(cached, cold, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_swipe_prefills_one_token():
    runner = tiny_runner()
    prompt = list(range(1, 30))
    cold = prefill(runner, "a", prompt)
    runner.release("a", prompt)
    again = prefill(runner, "b", prompt)
    assert runner.reused_tokens == 28 and runner.prefilled_tokens == 29 + 1
    torch.testing.assert_close(again, cold, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_budget_and_superseded_entries():
    runner = tiny_runner(budget=50)
    cache = runner.prefix_cache
    for name, ids in (("a", list(range(1, 21))), ("b", list(range(1, 31)))):
        prefill(runner, name, ids)
        runner.release(name, ids)
    assert len(cache) == 1 and cache.tokens == 30  # the longer entry replaced its prefix
    prefill(runner, "c", list(range(33, 63)))
    runner.release("c", list(range(33, 63)))
    assert cache.tokens <= 50 and len(cache) == 1  # the older entry went out to respect the budget


def test_nothing_kept_without_budget():
    cache = PrefixCache(budget_tokens=0)
    assert cache.take([1, 2, 3]) == (None, 0, 0)
