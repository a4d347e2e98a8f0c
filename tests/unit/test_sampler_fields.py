"""Every client's spelling of the sampler fields lands on the same SamplingParams."""

import json
from pathlib import Path

import pytest

from sampling import SamplingParams, SamplingParamsError
from server.protocol.completions import CompletionRequest
from server.protocol.sampling import SamplerFields, parse_breakers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sillytavern"
DEFAULTS = SamplingParams()
BREAKERS = ["\n", ":", '"', "*"]


def params(**fields) -> SamplingParams:
    return SamplerFields.model_validate(fields).sampling_params(DEFAULTS, ["::::"])


@pytest.mark.parametrize(
    "breakers",
    [BREAKERS, json.dumps(BREAKERS), '"\\n", ":", "\\"", "*"', '\n,:,",*', '\\n, :, ", *'],
    ids=["list", "json-string", "items-without-brackets", "comma-separated", "comma-separated-escaped"],
)
def test_breakers_in_every_shape(breakers):
    assert params(dry_sequence_breakers=breakers).dry_sequence_breakers == (*BREAKERS, "::::")


def test_label_mark_is_always_a_breaker_and_not_doubled():
    assert params(dry_sequence_breakers=["::::", "\n"]).dry_sequence_breakers == ("::::", "\n")


@pytest.mark.parametrize(
    "card",
    [
        {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": 0},
        {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_range": 0},
    ],
)
def test_card_dry_settings_under_both_range_names(card):
    got = params(temperature=1.0, min_p=0.05, **card)
    assert (got.dry_multiplier, got.dry_base, got.dry_allowed_length, got.dry_penalty_last_n) == (0.8, 1.75, 2, 0)
    assert (got.temperature, got.min_p) == (1.0, 0.05)


@pytest.mark.parametrize("name", ["repetition_penalty", "rep_pen", "repeat_penalty"])
def test_repetition_penalty_names(name):
    assert params(**{name: 1.1}).repetition_penalty == 1.1


@pytest.mark.parametrize("name", ["penalty_range", "repetition_penalty_range", "rep_pen_range", "repeat_last_n"])
def test_penalty_range_names(name):
    assert params(**{name: 64}).penalty_range == 64


@pytest.mark.parametrize("name", ["seed", "sampler_seed"])
def test_seed_names(name):
    assert params(**{name: 1234}).seed == 1234


def test_negative_seed_means_random():
    assert params(seed=-1).seed is None


@pytest.mark.parametrize("name", ["max_tokens", "max_new_tokens", "n_predict"])
def test_max_tokens_names(name):
    assert CompletionRequest.model_validate({"prompt": "x", name: 77}).max_tokens == 77


def test_unlimited_n_predict():
    assert CompletionRequest.model_validate({"prompt": "x", "n_predict": -1}).max_tokens is None


def test_stop_and_stopping_strings_are_merged():
    request = CompletionRequest.model_validate({"prompt": "x", "stop": ["A", "B"], "stopping_strings": ["B", "C"]})
    assert request.stop_list() == ["A", "B", "C"]


def test_token_bans_and_eos():
    got = params(custom_token_bans="128009, 13", ban_eos_token=True, min_length=3)
    assert (got.banned_token_ids, got.ignore_eos, got.min_tokens) == (frozenset({128009, 13}), True, 3)
    assert params(banned_tokens=[5]).banned_token_ids == frozenset({5})
    assert params(custom_token_bans="").banned_token_ids == frozenset()


def test_logit_bias_as_llamacpp_pairs():
    assert params(logit_bias=[[5, 2.5], [6, False]]).logit_bias == {5: 2.5, 6: -100}
    assert params(logit_bias=[]).logit_bias == {}


def test_ooba_priority_with_temperature_last():
    priority = ["repetition_penalty", "dry", "temperature", "top_k", "top_p", "typical_p", "min_p", "xtc"]
    got = params(sampler_priority=priority, temperature_last=True)
    assert got.order == ("penalties", "dry", "top_k", "top_p", "min_p", "temperature")
    assert params(sampler_priority=priority).order == ("penalties", "dry", "temperature", "top_k", "top_p", "min_p")


def test_llamacpp_sampler_names():
    names = [
        "penalties",
        "dry",
        "top_n_sigma",
        "top_k",
        "typ_p",
        "tfs_z",
        "typical_p",
        "xtc",
        "top_p",
        "min_p",
        "temperature",
    ]
    assert params(samplers=names).order == ("penalties", "dry", "top_k", "top_p", "min_p", "temperature")
    assert params(samplers=["min_p", "temperature", "top_k"]).order == (
        "penalties",
        "dry",
        "min_p",
        "temperature",
        "top_k",
        "top_p",
    )


def test_kobold_sampler_order_ids():
    assert params(sampler_order=[6, 0, 1, 3, 4, 2, 5]).order == (
        "penalties",
        "dry",
        "top_k",
        "top_p",
        "min_p",
        "temperature",
    )
    assert params(sampler_order=[5, 6, 0, 2]).order[0] == "temperature"


def test_temperature_first_without_an_explicit_order():
    assert params(temperature_last=False).order == ("penalties", "dry", "temperature", "top_k", "top_p", "min_p")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"sampler_priority": ["min_p", "warp_drive"]}, "sampler_priority"),
        ({"samplers": ["bogus"]}, "samplers"),
        ({"sampler_order": [9]}, "sampler_order"),
        ({"dry_allowed_length": 0}, "dry_allowed_length"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_multiplier": -1}, "dry_multiplier"),
        ({"dry_sequence_breakers": [str(i) for i in range(40)]}, "dry_sequence_breakers"),
    ],
)
def test_bad_values_name_their_field(fields, param):
    with pytest.raises(SamplingParamsError) as error:
        params(**fields)
    assert error.value.param == param


def test_parse_breakers_leaves_lists_alone():
    assert parse_breakers(["a,b"]) == ["a,b"]


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_sillytavern_generation_body_parses(fixture):
    for sent in json.loads(fixture.read_text())["requests_sent_to_backend"]:
        if sent["path"] in ("/v1/completions", "/completion"):
            request = CompletionRequest.model_validate(sent["body"])
            got = request.sampling_params(DEFAULTS, ["::::"])
            assert "::::" in got.dry_sequence_breakers
            assert got.temperature == sent["body"]["temperature"]
