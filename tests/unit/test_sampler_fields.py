"""Every client's spelling of the sampler fields lands on the same SamplingParams."""

import json
from pathlib import Path

import pytest

from sampling import SamplingParams, SamplingParamsError
from server.protocol.completions import CompletionRequest
from server.protocol.fields import ignored_fields
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
    """Named steps keep their order; steps left out go where the default order has them (right after the nearest
    step before them there); temperature_last moves the three temperature steps to the end."""
    priority = ["repetition_penalty", "dry", "temperature", "top_k", "top_p", "typical_p", "min_p", "xtc"]
    got = params(sampler_priority=priority, temperature_last=True)
    assert got.order == (
        "penalties", "dry", "top_n_sigma", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs",
        "top_a", "min_p", "mirostat", "xtc", "temperature", "dynamic_temperature", "quadratic_sampling",
    )  # fmt: skip
    assert params(sampler_priority=priority).order == (
        "penalties", "dry", "top_n_sigma", "temperature", "dynamic_temperature", "quadratic_sampling", "top_k",
        "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs", "top_a", "min_p", "mirostat", "xtc",
    )  # fmt: skip


def test_llamacpp_sampler_names():
    names = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "tfs_z", "typical_p", "xtc", "top_p", "min_p"]
    assert params(samplers=[*names, "temperature"]).order == (
        "penalties", "dry", "top_n_sigma", "top_k", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs", "top_a",
        "xtc", "top_p", "min_p", "mirostat", "temperature", "dynamic_temperature", "quadratic_sampling",
    )  # fmt: skip
    assert params(samplers=["min_p", "temperature", "top_k"]).order == (
        "penalties", "dry", "top_n_sigma", "min_p", "mirostat", "xtc", "temperature", "dynamic_temperature",
        "quadratic_sampling", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs", "top_a",
    )  # fmt: skip


def test_kobold_sampler_order_ids():
    """KoboldCpp's 1 is top-a, 2 top-p with min-p, 3 tail-free, 4 typical; 5 its temperature step with dynamic
    temperature and smoothing; 6 the penalties with DRY."""
    assert params(sampler_order=[6, 0, 1, 3, 4, 2, 5]).order == (
        "penalties", "dry", "top_n_sigma", "top_k", "top_a", "tfs", "typical_p", "epsilon_cutoff", "eta_cutoff",
        "top_p", "min_p", "mirostat", "xtc", "temperature", "dynamic_temperature", "quadratic_sampling",
    )  # fmt: skip
    assert params(sampler_order=[5, 6, 0, 2]).order[:4] == (
        "temperature", "dynamic_temperature", "quadratic_sampling", "penalties"
    )


def test_temperature_first_without_an_explicit_order():
    assert params(temperature_last=False).order == (
        "penalties", "dry", "temperature", "dynamic_temperature", "quadratic_sampling", "top_n_sigma", "top_k",
        "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs", "top_a", "min_p", "mirostat", "xtc",
    )  # fmt: skip


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
        ({"typical": 0}, "typical_p"),
        ({"smoothing_curve": 5}, "smoothing_curve"),
        ({"mirostat": 1}, "mirostat_mode"),
        ({"dynamic_temperature": True, "dynatemp_low": -1, "dynatemp_high": 2}, "dynatemp_low"),
        ({"dynamic_temperature": True, "dynatemp_low": 2, "dynatemp_high": 1}, "dynatemp_high"),
        ({"xtc_threshold": 2}, "xtc_threshold"),
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


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"nsigma": 1.5}, {"top_n_sigma": 1.5}),
        ({"top_n_sigma": 1.5, "nsigma": 0}, {"top_n_sigma": 1.5}),  # SillyTavern sends both; the first name wins
        ({"typical": 0.9}, {"typical_p": 0.9}),
        ({"typ_p": 0.9}, {"typical_p": 0.9}),
        ({"tfs_z": 0.95}, {"tfs": 0.95}),
        ({"mirostat": 2, "mirostat_tau": 3, "mirostat_eta": 0.2}, {"mirostat_mode": 2, "mirostat_tau": 3}),
        ({"xtc_threshold": 0.2, "xtc_probability": 0.5}, {"xtc_threshold": 0.2, "xtc_probability": 0.5}),
        ({"smoothing_factor": 0.3, "smoothing_curve": 1.5}, {"smoothing_factor": 0.3, "smoothing_curve": 1.5}),
        ({"top_a": 0.2, "epsilon_cutoff": 3, "eta_cutoff": 3}, {"top_a": 0.2, "epsilon_cutoff": 3, "eta_cutoff": 3}),
    ],
)
def test_every_clients_names_for_the_extra_samplers(fields, expected):
    got = params(**fields)
    assert {name: getattr(got, name) for name in expected} == expected


def test_dynamic_temperature_in_every_dialect():
    # text-generation-webui through SillyTavern: the switch, the bounds, and their mean as temperature.
    ooba = params(dynamic_temperature=True, dynatemp_low=0.5, dynatemp_high=1.5, temperature=1.0)
    assert (ooba.dynatemp_low, ooba.dynatemp_high, ooba.uses_dynamic_temperature) == (0.5, 1.5, True)
    # llama.cpp and KoboldCpp: temperature +- range.
    llamacpp = params(temperature=1.0, dynatemp_range=0.5, dynatemp_exponent=2)
    assert (llamacpp.dynatemp_low, llamacpp.dynatemp_high, llamacpp.dynatemp_exponent) == (0.5, 1.5, 2)
    assert params(temperature=0.3, dynatemp_range=0.5).dynatemp_low == 0.0
    # Aphrodite and TabbyAPI: the bounds alone.
    assert params(dynatemp_min=0.5, dynatemp_max=1.5).uses_dynamic_temperature
    assert params(min_temp=0.5, max_temp=1.5, temp_exponent=1.5).dynatemp_exponent == 1.5
    # Switched off, or a range of one value (that temperature).
    assert not params(dynamic_temperature=False, dynatemp_low=0.5, dynatemp_high=1.5).uses_dynamic_temperature
    single = params(dynamic_temperature=True, dynatemp_low=0.7, dynatemp_high=0.7, temperature=1.0)
    assert (single.uses_dynamic_temperature, single.temperature) == (False, 0.7)


def test_a_universal_light_style_body_ignores_none_of_its_samplers():
    """SillyTavern's "Universal-Light" preset through its "Text Generation WebUI" type."""
    body = {
        "prompt": "x", "temperature": 1.25, "temperature_last": False, "min_p": 0.1, "smoothing_factor": 0.3,
        "smoothing_curve": 1, "dynamic_temperature": True, "dynatemp_low": 0.5, "dynatemp_high": 2.0,
        "dynatemp_exponent": 1, "typical_p": 1, "typical": 1, "tfs": 1, "top_a": 0, "epsilon_cutoff": 0,
        "eta_cutoff": 0, "mirostat_mode": 0, "mirostat": 0, "mirostat_tau": 5, "mirostat_eta": 0.1,
        "xtc_threshold": 0.1, "xtc_probability": 0, "nsigma": 0, "top_n_sigma": 0,
    }  # fmt: skip
    request = CompletionRequest.model_validate(body)
    assert ignored_fields(request) == []
    got = request.sampling_params(DEFAULTS, ["::::"])
    assert (got.smoothing_factor, got.min_p, got.dynatemp_low, got.dynatemp_high) == (0.3, 0.1, 0.5, 2.0)
    assert got.order.index("temperature") < got.order.index("top_k")  # temperature_last false: temperature first
