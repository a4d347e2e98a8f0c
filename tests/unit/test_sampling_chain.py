import math

import pytest
import torch

from sampling import DEFAULT_ORDER, SamplingParams, SamplingParamsError
from sampling.filters import mask_min_p, mask_top_k, mask_top_p
from sampling.order import with_temperature_first
from sampling.sampler import Sampler
from tests.distribution import probabilities

INF = float("inf")
VOCAB = [f"w{i}" for i in range(8)]
NO_DRY = {"dry_multiplier": 0.0, "min_p": 0.0}


def toy_tokenize(text: str) -> list[int]:
    return [VOCAB.index(text)] if text in VOCAB else []


def log_probs(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def kept(masked: torch.Tensor) -> list[list[bool]]:
    return (masked != -INF).tolist()


def sampler(slots: int = 2, eos: tuple[int, ...] = ()) -> Sampler:
    return Sampler(slots=slots, capacity=64, vocab=VOCAB, tokenize=toy_tokenize, eos_ids=eos)


def probs_of(logits: list[float], history: list[int], **params) -> list[float]:
    tensor = torch.tensor(logits)
    result = probabilities(tensor, history, SamplingParams(**params), vocab=VOCAB, tokenize=toy_tokenize)
    return [round(p, 6) for p in result.tolist()]


def test_top_k_keeps_the_k_largest_per_row():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    assert kept(mask_top_k(logits.clone(), [2, 0])) == [[False, True, True, False], [True] * 4]
    assert mask_top_k(logits, [-1, 0]) is logits


def test_top_p_keeps_the_smallest_head_reaching_p():
    logits = log_probs(0.5, 0.3, 0.15, 0.05)
    assert kept(mask_top_p(logits.clone(), [0.75])) == [[True, True, False, False]]
    assert kept(mask_top_p(logits.clone(), [0.85])) == [[True, True, True, False]]
    assert kept(mask_top_p(logits.clone(), [0.1])) == [[True, False, False, False]]


def test_min_p_threshold_is_relative_to_the_top_token():
    logits = log_probs(0.5, 0.3, 0.04, 0.16)
    assert kept(mask_min_p(logits.clone(), [0.1])) == [[True, True, False, True]]
    assert kept(mask_min_p(logits.clone(), [0.0])) == [[True] * 4]


def test_min_p_keeps_ties_and_the_top_token():
    assert kept(mask_min_p(torch.tensor([[2.0, 2.0, 0.0]]), [1.0])) == [[True, True, False]]


def test_min_p_on_the_final_distribution():
    # p = [0.5, 0.3, 0.2, ~0]: min-p 0.5 keeps tokens with p >= 0.25.
    logits = [math.log(0.5), math.log(0.3), math.log(0.2)] + [-30.0] * 5
    assert probs_of(logits, [0], min_p=0.5, dry_multiplier=0) == [0.625, 0.375] + [0.0] * 6


def test_temperature_last_filters_on_the_untempered_distribution():
    logits = [math.log(0.5), math.log(0.3), math.log(0.2)] + [-30.0] * 5
    hot_last = probs_of(logits, [0], temperature=5.0, min_p=0.5, dry_multiplier=0)
    assert hot_last[2] == 0.0
    # Temperature first flattens the distribution, so min-p then keeps the third token.
    hot_first = probs_of(
        logits, [0], temperature=5.0, min_p=0.5, dry_multiplier=0, order=with_temperature_first(DEFAULT_ORDER)
    )
    assert hot_first[2] > 0.0


def test_greedy_is_a_one_hot_distribution_after_bias():
    assert probs_of([0, 5, 1, 0, 0, 0, 0, 0], [0], temperature=0, logit_bias={2: 10.0}, **NO_DRY)[2] == 1.0


def test_greedy_rows_take_the_arg_max_after_bias():
    s = sampler()
    rows = [
        s.add([0], SamplingParams(temperature=0, **NO_DRY)),
        s.add([0], SamplingParams(temperature=0, logit_bias={2: 10.0}, **NO_DRY)),
    ]
    logits = torch.tensor([[0.0, 5.0, 1.0] + [0.0] * 5] * 2)
    assert s.sample(logits, rows) == [1, 2]


def test_banned_tokens_and_eos_until_min_tokens():
    s = sampler(slots=1, eos=(3,))
    row = s.add([0], SamplingParams(temperature=0, banned_token_ids=frozenset({1}), min_tokens=2, **NO_DRY))
    logits = torch.tensor([[0.0, 9.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0]])
    assert [s.sample(logits, [row])[0] for _ in range(3)] == [2, 2, 3]


def test_ignore_eos_bans_it_for_good():
    s = sampler(slots=1, eos=(3,))
    row = s.add([0], SamplingParams(temperature=0, ignore_eos=True, **NO_DRY))
    logits = torch.tensor([[0.0, 0.0, 1.0, 8.0, 0.0, 0.0, 0.0, 0.0]])
    assert [s.sample(logits, [row])[0] for _ in range(3)] == [2, 2, 2]


def test_repetition_frequency_and_presence_penalties_exact():
    logits = [2.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    history = [0, 0, 1]
    params = {"temperature": 0.5, "repetition_penalty": 2.0, "frequency_penalty": 0.25, "presence_penalty": 0.5}
    got = probs_of(logits, history, **params, **NO_DRY)
    # token 0 (twice): 2 / 2 - 0.5 - 0.5 = 0; token 1 (once): -1 * 2 - 0.25 - 0.5 = -2.75; then / 0.5.
    expected = torch.softmax(torch.tensor([0.0, -2.75, 1.0, 0, 0, 0, 0, 0]) / 0.5, dim=0)
    assert got == [round(p, 6) for p in expected.tolist()]


def test_penalty_range_limits_the_window():
    # Only the last token (1) is inside the window: token 0 keeps its logit.
    got = probs_of([1.0] * 8, [0, 1], presence_penalty=1.0, penalty_range=1, **NO_DRY)
    expected = torch.softmax(torch.tensor([1.0, 0.0] + [1.0] * 6), dim=0)
    assert got == [round(p, 6) for p in expected.tolist()]


def test_same_seed_same_draws_whatever_the_batch():
    logits = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    params = SamplingParams(seed=42, **NO_DRY)
    alone_sampler, batch_sampler = sampler(slots=1), sampler(slots=2)
    alone = alone_sampler.add([0], params)
    other, batched = batch_sampler.add([0], SamplingParams(seed=7, **NO_DRY)), batch_sampler.add([0], params)
    alone_draws = [alone_sampler.sample(logits[1:], [alone])[0] for _ in range(20)]
    batch_draws = [batch_sampler.sample(logits, [other, batched])[1] for _ in range(20)]
    assert alone_draws == batch_draws
    assert len(set(alone_draws)) > 1


def test_rows_with_different_orders_in_one_batch():
    s = sampler()
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)] + [-30.0] * 5] * 2)
    first = with_temperature_first(DEFAULT_ORDER)
    rows = [
        s.add([0], SamplingParams(temperature=5.0, min_p=0.5, dry_multiplier=0)),
        s.add([0], SamplingParams(temperature=5.0, min_p=0.5, dry_multiplier=0, order=first)),
    ]
    processed = s.process(logits, rows)
    assert processed[0, 2] == -INF and processed[1, 2] > -INF


def test_slots_are_reused_after_removal():
    s = sampler(slots=1)
    row = s.add([0], SamplingParams(**NO_DRY))
    with pytest.raises(RuntimeError):
        s.add([0], SamplingParams(**NO_DRY))
    s.remove(row)
    assert s.add([1, 2], SamplingParams(**NO_DRY)) == row


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("top_k", -2),
        ("dry_allowed_length", 0),
        ("dry_base", 0.9),
        ("dry_multiplier", -0.1),
        ("dry_sequence_breakers", tuple(str(i) for i in range(33))),
        ("dry_sequence_breakers", ("x" * 65,)),
        ("dry_sequence_breakers", ("",)),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", 5e-324),
        ("order", ("dry", "top_k")),
    ],
)
def test_out_of_range_values_name_their_field(field, value):
    with pytest.raises(SamplingParamsError) as error:
        SamplingParams(**{field: value})
    assert error.value.param == field


def test_card_defaults():
    params = SamplingParams()
    assert (params.temperature, params.min_p, params.top_p, params.top_k) == (1.0, 0.05, 1.0, 0)
    assert (params.dry_multiplier, params.dry_base, params.dry_allowed_length) == (0.8, 1.75, 2)
    assert "::::" in params.dry_sequence_breakers
    assert (params.repetition_penalty, params.frequency_penalty, params.presence_penalty) == (1.0, 0.0, 0.0)
    assert params.order == DEFAULT_ORDER == (
        "penalties", "dry", "top_n_sigma", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs",
        "top_a", "min_p", "mirostat", "xtc", "temperature", "dynamic_temperature", "quadratic_sampling",
    )  # fmt: skip
    assert (params.xtc_probability, params.top_n_sigma, params.typical_p, params.tfs, params.top_a) == (0, 0, 1, 1, 0)
    assert (params.epsilon_cutoff, params.eta_cutoff, params.smoothing_factor, params.mirostat_mode) == (0, 0, 0, 0)
    assert not params.uses_dynamic_temperature


def test_rows_with_nan_or_no_possible_token_get_none_and_leave_the_others_alone():
    s = sampler(slots=3)
    params = SamplingParams(temperature=0, **NO_DRY)
    healthy, broken, all_banned = s.add([0], params), s.add([0], params), s.add([0], params)
    logits = torch.tensor([[0.0, 5.0] + [0.0] * 6, [float("nan")] + [0.0] * 7, [0.0] * 8])
    assert s.sample(logits, [healthy, broken, all_banned], [frozenset(), frozenset(), frozenset(range(8))]) == [
        1,
        None,
        None,
    ]
    # Only the healthy row recorded its token: the others can still take theirs (the engine fails them instead).
    assert s.sample(logits[:1], [healthy]) == [1]


def test_a_temperature_too_small_to_divide_by_is_greedy():
    s = sampler(slots=1)
    row = s.add([0], SamplingParams(temperature=5e-324, **NO_DRY))
    assert s.sample(torch.tensor([[0.0, 5.0, 4.9] + [0.0] * 5]), [row]) == [1]
