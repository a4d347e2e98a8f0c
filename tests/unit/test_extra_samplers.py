"""XTC, top-n-sigma, typical, tail-free, top-a, epsilon, eta, smoothing, dynamic temperature and mirostat v2, as
docs/SAMPLERS.md defines them: exact distributions through `tests.distribution.probabilities` (the way to get the
distribution a token is drawn from) and the batched sampler."""

import math

import pytest
import torch

from sampling import SamplingParams
from sampling.filters import mask_tail_free, mask_typical
from sampling.sampler import Sampler
from tests.distribution import probabilities

VOCAB = [f"w{i}" for i in range(8)]
NEUTRAL = {"dry_multiplier": 0.0, "min_p": 0.0}
# p = 0.4, 0.3, 0.2, 0.05, 0.05, and three tokens an earlier step masked.
P = [0.4, 0.3, 0.2, 0.05, 0.05]
LOGITS = [math.log(p) for p in P] + [-math.inf] * 3


def toy_tokenize(text: str) -> list[int]:
    return [VOCAB.index(text)] if text in VOCAB else []


def dist(logits: list[float] = LOGITS, **params: object) -> list[float]:
    result = probabilities(
        torch.tensor(logits), [0], SamplingParams(**NEUTRAL, **params), vocab=VOCAB, tokenize=toy_tokenize
    )
    return [round(p, 4) for p in result.tolist()]


def renormalised(kept: list[int], probs: list[float] = P) -> list[float]:
    total = sum(probs[i] for i in kept)
    return [round(probs[i] / total, 4) if i in kept else 0.0 for i in range(8)]


def test_every_sampler_off_by_default_changes_nothing():
    assert dist() == renormalised([0, 1, 2, 3, 4])


def test_top_n_sigma_uses_the_finite_logits_only():
    logits = [3.0, 2.5, 0.0] + [-math.inf] * 5
    # Finite logits: sigma = 1.6073 (N-1), floor 3 - 0.35 sigma = 2.4375 keeps 2.5. Counting the five masked ones
    # as zeros (text-generation-webui's code) would give sigma 1.28 and drop it.
    kept = dist(logits, top_n_sigma=0.35)
    assert kept[0] > 0 and kept[1] > 0 and kept[2:] == [0.0] * 6
    assert dist(logits, top_n_sigma=0.3)[1:] == [0.0] * 7
    assert dist([1.0] * 8, top_n_sigma=0.1) == [0.125] * 8  # flat: sigma 0, all stay


@pytest.mark.parametrize(("mass", "kept"), [(0.6, [0, 1, 2]), (0.4, [1, 2]), (0.2, [1]), (1.0, [0, 1, 2, 3, 4])])
def test_typical_keeps_the_most_typical_first(mass, kept):
    # Entropy 1.3492; typicality |-ln p - H|: 0.3 is the most typical, then 0.2, 0.4, then the two 0.05.
    expected = renormalised(kept) if mass < 1 else renormalised([0, 1, 2, 3, 4])
    assert dist(typical_p=mass) == expected


def test_typical_decided_on_the_head_equals_the_whole_sort():
    generator = torch.Generator().manual_seed(4)
    logits = -1.1 * torch.log(torch.arange(1, 5001, dtype=torch.float32))[torch.randperm(5000, generator=generator)]
    for mass in (0.2, 0.9, 0.999):
        fast = mask_typical(logits.unsqueeze(0).clone(), [mass])
        assert torch.equal(fast, whole_sort_typical(logits.unsqueeze(0).clone(), mass)), mass


def whole_sort_typical(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """transformers' TypicalLogitsWarper, as written there."""
    normalized = torch.log_softmax(scores, dim=-1)
    p = normalized.exp()
    ent = -(normalized * p).nansum(-1, keepdim=True)
    shifted = (-normalized - ent).abs()
    sorted_scores, sorted_indices = shifted.sort(descending=False)
    cumulative = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp(max=sorted_scores.shape[-1] - 1)
    removed = sorted_scores > sorted_scores.gather(1, last.view(-1, 1))
    removed[..., :1] = False
    return scores.masked_fill(removed.scatter(1, sorted_indices, removed), float("-inf"))


def test_typical_keeps_every_token_tied_with_the_last_one():
    probs = [0.3, 0.3, 0.2, 0.2]
    logits = [math.log(p) for p in probs] + [-math.inf] * 4
    # H = 1.3662: the 0.3 tokens are the most typical (0.162 from it), and equally so: reaching the mass with
    # the first keeps the second too.
    assert dist(logits, typical_p=0.1) == renormalised([0, 1], probs)


@pytest.mark.parametrize(("z", "kept"), [(0.5, [0, 1, 2]), (0.75, [0, 1, 2, 3]), (0.1, [0, 1])])
def test_tail_free(z, kept):
    # Sorted p (masked tokens as zeros at the tail): second differences |.| = 0, .04, .12, .02, .04, 0 over .22;
    # running sum 0, .18, .73, .82, 1, 1: position j goes once the sum up to j-1 passes z; the last always goes.
    probs = [0.4, 0.3, 0.2, 0.06, 0.04]
    assert dist([math.log(p) for p in probs] + [-math.inf] * 3, tfs=z) == renormalised(kept, probs)


def test_tail_free_decided_on_the_head_equals_the_whole_sort():
    """On a large vocabulary the cut is looked for among the most likely tokens first: same answer."""
    generator = torch.Generator().manual_seed(3)
    logits = -1.2 * torch.log(torch.arange(1, 5001, dtype=torch.float32))[torch.randperm(5000, generator=generator)]
    for z in (0.3, 0.9, 0.99):
        fast = mask_tail_free(logits.unsqueeze(0).clone(), [z])
        whole = whole_sort_tail_free(logits.unsqueeze(0).clone(), z)
        assert torch.equal(fast, whole), z


def whole_sort_tail_free(logits: torch.Tensor, z: float) -> torch.Tensor:
    """text-generation-webui's TailFreeLogitsWarper, as written there."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    d2 = probs.diff().diff().abs()
    cdf = (d2 / d2.sum(dim=-1, keepdim=True)).cumsum(dim=-1)
    removed = torch.cat([torch.zeros(1, 1, dtype=torch.bool), cdf > z, torch.ones(1, 1, dtype=torch.bool)], dim=-1)
    return logits.masked_fill(removed.scatter(1, order, removed), float("-inf"))


def test_tail_free_on_flat_logits_drops_only_the_last_sorted_token():
    assert sum(1 for p in dist([0.0] * 8, tfs=0.5) if p > 0) == 7


def test_top_a():
    # Limit a * max(p)^2 = 0.5 * 0.16 = 0.08: the two 0.05 go.
    assert dist(top_a=0.5) == renormalised([0, 1, 2])
    assert dist(top_a=2.0) == renormalised([0, 1, 2, 3, 4])  # above 1: off, as in text-generation-webui


def test_epsilon_in_units_of_1e4_keeps_the_top_token():
    assert dist(epsilon_cutoff=600) == renormalised([0, 1, 2])  # 0.06
    assert dist([0.0] * 8, epsilon_cutoff=2000) == [0.125] * 8  # all below 0.2, all tied with the top


def test_eta():
    # eps = 0.09: min(0.09, 0.3 * exp(-1.3492) = 0.0778) removes the 0.05 tokens.
    assert dist(eta_cutoff=900) == renormalised([0, 1, 2])
    assert dist(eta_cutoff=400) == renormalised([0, 1, 2, 3, 4])  # min(0.04, 0.2 * 0.2594) = 0.04 < 0.05


@pytest.mark.parametrize(
    ("curve", "expected"), [(1.0, [0.0, -1.0, -4.0]), (3.0, [0.0, -1.0, -8.0]), (2.0, [0.0, -1.0, -6.0])]
)
def test_smoothing_reshapes_around_the_top(curve, expected):
    logits = [0.0, -1.0, -2.0] + [-math.inf] * 5
    want = torch.softmax(torch.tensor(expected + [-math.inf] * 5), dim=-1).tolist()
    assert dist(logits, smoothing_factor=1.0, smoothing_curve=curve) == [round(p, 4) for p in want]


def tempered(probs: list[float], temperature: float) -> list[float]:
    scaled = [math.log(p) / temperature for p in probs]
    return torch.softmax(torch.tensor(scaled + [-math.inf] * (8 - len(probs))), dim=-1).tolist()


def test_dynamic_temperature_from_the_entropy_and_replacing_temperature():
    # H / ln N = 0.3251 / 0.6931 = 0.469: T = 0.5 + 1.5 * 0.469 = 1.2035.
    logits = [math.log(0.9), math.log(0.1)] + [-math.inf] * 6
    entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    expected = tempered([0.9, 0.1], 0.5 + 1.5 * entropy / math.log(2))
    got = dist(logits, dynatemp_low=0.5, dynatemp_high=2.0, temperature=5.0)  # the plain temperature is replaced
    assert got == [round(p, 4) for p in expected]
    squared = tempered([0.9, 0.1], 0.5 + 1.5 * (entropy / math.log(2)) ** 2)
    assert dist(logits, dynatemp_low=0.5, dynatemp_high=2.0, dynatemp_exponent=2.0) == [round(p, 4) for p in squared]
    assert dist(logits, dynatemp_low=2.0, dynatemp_high=2.0) == dist(logits)  # low == high: off


def test_dynamic_temperature_that_small_is_greedy():
    logits = [0.0, -40.0, -40.0] + [-math.inf] * 5
    assert dist(logits, dynatemp_low=0.0, dynatemp_high=1e-3) == [1.0] + [0.0] * 7


def test_xtc_removes_the_top_choices_but_the_least_probable():
    # p >= 0.1: 0.4, 0.3 and 0.2; all but the least probable of them go.
    assert dist(xtc_threshold=0.1, xtc_probability=1.0) == renormalised([2, 3, 4])
    assert dist(xtc_threshold=0.35, xtc_probability=1.0) == renormalised([0, 1, 2, 3, 4])  # only one reaches it


def test_xtc_is_skipped_when_it_would_remove_eos_or_the_newline():
    params = SamplingParams(**NEUTRAL, xtc_threshold=0.1, xtc_probability=1.0)
    logits = torch.tensor([LOGITS])
    for eos, newline_vocab in (((0,), VOCAB), ((), [*VOCAB[:1], "\n", *VOCAB[2:]])):
        sampler = Sampler(
            slots=1, capacity=8, vocab=newline_vocab, tokenize=newline_vocab_tokenize(newline_vocab), eos_ids=eos
        )
        slot = sampler.add([0], params)
        assert torch.equal(sampler.process(logits, [slot]), logits)


def newline_vocab_tokenize(vocab: list[str]):
    return lambda text: [vocab.index(text)] if text in vocab else []


def test_mirostat_cuts_at_its_surprise_target_and_moves_it():
    # tau 1: mu = 2. Surprise -log2 p: 1.32, 1.74, 2.32, ... The cut keeps 0.4 and 0.3.
    params = SamplingParams(**NEUTRAL, mirostat_mode=2, mirostat_tau=1.0, mirostat_eta=3.0, temperature=0)
    assert dist(mirostat_mode=2, mirostat_tau=1.0) == renormalised([0, 1])
    sampler = Sampler(slots=1, capacity=8, vocab=VOCAB, tokenize=toy_tokenize)
    slot = sampler.add([0], params)
    logits = torch.tensor([LOGITS])
    assert sampler.sample(logits, [slot]) == [0]  # greedy: drawn with p = 0.4 / 0.7, surprise 0.807
    # mu = 2 - 3 * (0.807 - 1) = 2.578: the 0.2 token (surprise 2.32) is kept now.
    assert (sampler.process(logits, [slot])[0] > -math.inf).tolist()[:5] == [True, True, True, False, False]
    sampler.rewind(slot, [0], generated=0)  # a banned-string back-off: mu goes back with the output
    assert (sampler.process(logits, [slot])[0] > -math.inf).tolist()[:5] == [True, True, False, False, False]


def test_steps_after_mirostat_cannot_change_its_draw():
    assert dist(mirostat_mode=2, mirostat_tau=1.0, temperature=5.0) == renormalised([0, 1])


def test_samplers_see_the_survivors_of_earlier_steps():
    # top-k 3 first: top-a's limit is then 0.5 * (0.4 / 0.9)^2 = 0.099 on p = .444, .333, .222: all stay.
    assert dist(top_k=3, top_a=0.5) == renormalised([0, 1, 2])


def test_rows_with_different_samplers_in_one_batch():
    sampler = Sampler(slots=3, capacity=8, vocab=VOCAB, tokenize=toy_tokenize)
    slots = [
        sampler.add([0], SamplingParams(**NEUTRAL, top_a=0.5)),
        sampler.add([0], SamplingParams(**NEUTRAL)),
        sampler.add([0], SamplingParams(**NEUTRAL, typical_p=0.4)),
    ]
    kept = (sampler.process(torch.tensor([LOGITS] * 3), slots) > -math.inf).tolist()
    assert [row[:5] for row in kept] == [
        [True, True, True, False, False],
        [True] * 5,
        [False, True, True, False, False],
    ]


def test_seeded_xtc_is_reproducible():
    def draws(seed: int) -> list[int]:
        sampler = Sampler(slots=1, capacity=64, vocab=VOCAB, tokenize=toy_tokenize)
        slot = sampler.add([0], SamplingParams(**NEUTRAL, xtc_threshold=0.1, xtc_probability=0.5, seed=seed))
        return [sampler.sample(torch.tensor([LOGITS]), [slot])[0] for _ in range(30)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert {0, 1} & set(draws(7)) and {3, 4} & set(draws(7))  # some steps acted, some did not


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("typical_p", 0.0),
        ("smoothing_curve", 0.5),
        ("smoothing_curve", 3.5),
        ("mirostat_mode", 1),
        ("mirostat_mode", 3),
        ("dynatemp_low", -0.1),
        ("xtc_probability", 1.5),
        ("top_n_sigma", -1.0),
    ],
)
def test_out_of_range_values_name_their_field(field, value):
    with pytest.raises(ValueError) as error:
        SamplingParams(**{field: value})
    assert error.value.param == field
