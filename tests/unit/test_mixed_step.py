"""A mixed step (the decode rows and the step's prompt chunks in one forward, forward/mixed_step.py) gives the
logits that the decode forward and each chunk's own forward give on transformers' operators, leaves every cache
where they leave it, and after a failure part-way through its layers leaves every cache as it was."""

import copy
import shutil

import pytest
import torch

from server.engine.forward.cpu_kernels import load_cpu_kernels
from server.engine.forward.runner import ModelRunner
from server.engine.options import default_cache_dir
from tests.toy import llama_with_head_dim_64, prefill, tiny_llama

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernels")

CLOSE = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert load_cpu_kernels(default_cache_dir())


def runners() -> tuple[ModelRunner, ModelRunner]:
    """Over the same random Llama (heads of 64, 3 query heads a group): a runner on transformers' operators, whose
    prompt chunks run the model's own forward, and one on the kernels, whose prompt chunks run as mixed steps."""
    model = llama_with_head_dim_64()
    reference = ModelRunner(copy.deepcopy(model), torch.device("cpu"), 0, kernel_cache=None)
    return reference, ModelRunner(model, torch.device("cpu"), 0)


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(1, 96, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def apart(
    runner: ModelRunner, steps: list[tuple[str, int]], chunks: list[tuple[str, int]]
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    decoded = runner.decode(steps) if steps else None
    return decoded, [runner.prefill_chunk(sample_id, budget) for sample_id, budget in chunks]


def assert_same(mixed: tuple, separate: tuple) -> None:
    (mixed_decoded, mixed_chunks), (decoded, chunks) = mixed, separate
    assert (mixed_decoded is None) == (decoded is None)
    if decoded is not None:
        torch.testing.assert_close(mixed_decoded, decoded, **CLOSE)
    assert [logits is None for logits in mixed_chunks] == [logits is None for logits in chunks]
    for mixed_logits, logits in zip(mixed_chunks, chunks, strict=True):
        if logits is not None:
            torch.testing.assert_close(mixed_logits, logits, **CLOSE)


@torch.inference_mode()
def test_a_mixed_step_gives_what_the_forwards_apart_give():
    reference, mixing = runners()
    assert mixing.mixes
    tokens = {}
    for name, length in (("a", 9), ("b", 300)):  # two rows of unequal length decoding
        expected = prefill(reference, name, prompt(length, len(name)))
        torch.testing.assert_close(prefill(mixing, name, prompt(length, len(name))), expected, **CLOSE)
        tokens[name] = int(expected.argmax())
    for runner in (reference, mixing):
        runner.start_prefill("c", prompt(200, 3))
    # c's chunks beside the decoding rows; d's whole prompt and c's last chunk beside them; then nothing decoding.
    plan = [[("c", 64)], [("c", 64)], [("d", 30), ("c", 64)], [("c", 64)]]
    for step, chunks in enumerate(plan):
        if step == 2:
            for runner in (reference, mixing):
                runner.start_prefill("d", prompt(30, 4))
        steps = list(tokens.items())
        expected = apart(reference, steps, chunks)
        assert_same(mixing.mixed_step(steps, chunks), expected)
        tokens = dict(zip(tokens, expected[0].argmax(-1).tolist(), strict=True))
        for (name, _), logits in zip(chunks, expected[1], strict=True):
            if logits is not None:
                tokens[name] = int(logits.argmax())
    assert set(tokens) == {"a", "b", "c", "d"}
    for _ in range(3):  # the rows the mixed steps wrote and joined decode as the others'
        expected = reference.decode(list(tokens.items()))
        torch.testing.assert_close(mixing.decode(list(tokens.items())), expected, **CLOSE)
        tokens = dict(zip(tokens, expected.argmax(-1).tolist(), strict=True))
    for runner in (reference, mixing):
        runner.start_prefill("e", prompt(50, 5))
        runner.start_prefill("f", prompt(70, 6))
    # Two prompts' chunks and no decode rows.
    assert_same(mixing.mixed_step([], [("e", 50), ("f", 40)]), apart(reference, [], [("e", 50), ("f", 40)]))


def fail_half_way(*_: object) -> None:
    raise RuntimeError("injected: a layer failed")


@torch.inference_mode()
def test_a_mixed_step_that_fails_half_way_leaves_every_cache_as_it_was():
    reference, mixing = runners()
    tokens = {}
    for runner in (reference, mixing):
        tokens = {"a": int(prefill(runner, "a", prompt(40, 1)).argmax())}
        runner.start_prefill("b", prompt(100, 2))
    for runner in (reference, mixing):
        assert runner.prefill_chunk("b", 60) is None
    layers = mixing.model.model.layers
    hook = layers[len(layers) // 2].register_forward_hook(fail_half_way)
    with pytest.raises(RuntimeError, match="injected"):
        mixing.mixed_step(list(tokens.items()), [("b", 64)])
    hook.remove()
    assert mixing.prefill_remaining("b") == 40
    assert_same(apart(mixing, list(tokens.items()), [("b", 64)]), apart(reference, list(tokens.items()), [("b", 64)]))


def test_no_mixed_steps_without_the_kernels_or_over_an_8_bit_cache():
    model = tiny_llama(hidden_size=384, num_attention_heads=6, num_key_value_heads=2)
    assert not ModelRunner(copy.deepcopy(model), torch.device("cpu"), 0, kernel_cache=None).mixes
    assert not ModelRunner(copy.deepcopy(model), torch.device("cpu"), 0, kv_cache_dtype="int8").mixes
    assert ModelRunner(model, torch.device("cpu"), 0).mixes
