import math

import pytest
import torch

from sampling import SamplingParams, SamplingParamsError, probabilities, sample_next_tokens
from sampling.chain import mask_min_p, mask_top_k, mask_top_p

INF = float("inf")


def log_probs(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def kept(masked: torch.Tensor) -> list[list[bool]]:
    return (masked != -INF).tolist()


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_top_k_keeps_the_k_largest_per_row():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    assert kept(mask_top_k(logits, [2, 0])) == [[False, True, True, False], [True] * 4]


def test_top_k_off_values():
    logits = torch.tensor([[1.0, 3.0]])
    assert mask_top_k(logits, [-1]) is logits


def test_top_p_keeps_the_smallest_head_reaching_p():
    logits = log_probs(0.5, 0.3, 0.15, 0.05)
    assert kept(mask_top_p(logits, [0.75])) == [[True, True, False, False]]
    assert kept(mask_top_p(logits, [0.85])) == [[True, True, True, False]]
    assert kept(mask_top_p(logits, [0.1])) == [[True, False, False, False]]


def test_min_p_threshold_is_relative_to_the_top_token():
    logits = log_probs(0.5, 0.3, 0.04, 0.16)
    assert kept(mask_min_p(logits, [0.1])) == [[True, True, False, True]]
    assert kept(mask_min_p(logits, [0.0])) == [[True] * 4]


def test_min_p_keeps_ties_and_the_top_token():
    logits = torch.tensor([[2.0, 2.0, 0.0]])
    assert kept(mask_min_p(logits, [1.0])) == [[True, True, False]]


def test_temperature_applies_after_min_p():
    logits = log_probs(0.5, 0.3, 0.2)
    hot = probabilities(logits, [SamplingParams(temperature=5.0, min_p=0.5)])[0]
    assert hot[2].item() == 0.0
    assert hot[0].item() > hot[1].item() > 0


def test_greedy_rows_take_the_arg_max_after_bias():
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, logit_bias={2: 10.0})]
    assert sample_next_tokens(logits, params, [generator(0), generator(0)]) == [1, 2]


def test_logit_bias_forces_a_token_when_sampling():
    logits = torch.zeros(1, 50)
    params = [SamplingParams(logit_bias={7: 100.0})]
    assert sample_next_tokens(logits, params, [generator(1)]) == [7]


def test_same_seed_same_draws_whatever_the_batch():
    logits = torch.randn(2, 100, generator=generator(3))
    params = SamplingParams(temperature=1.0, min_p=0.0)
    g_alone, g_batch, g_other = generator(42), generator(42), generator(7)
    alone = [sample_next_tokens(logits[1:], [params], [g_alone])[0] for _ in range(20)]
    batched = [sample_next_tokens(logits, [params, params], [g_other, g_batch])[1] for _ in range(20)]
    assert alone == batched
    assert len(set(alone)) > 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("top_k", -2)],
)
def test_out_of_range_values_name_their_field(field, value):
    with pytest.raises(SamplingParamsError) as error:
        SamplingParams(**{field: value})
    assert error.value.param == field


def test_logit_bias_range():
    with pytest.raises(SamplingParamsError, match="outside"):
        SamplingParams(logit_bias={1: 101.0})
