"""The sampler fields through HTTP: every client's spelling accepted, DRY measurably at work."""

import json
from pathlib import Path

import pytest

from tests.integration.test_errors import assert_openai_error

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sillytavern"
PASSAGE = (
    "The old keeper climbed the winding stairs every evening, lit the great lamp, and watched the ships pass far "
    "beyond the rocks, counting each one in a worn leather book that his father had given him long ago"
)
CUT = 60
PLANTED = PASSAGE + ". Later that year, the story was told again. " + PASSAGE[:CUT]


def copied_characters(client, **sampler) -> int:
    """How far the greedy continuation repeats the planted passage verbatim."""
    body = {"prompt": PLANTED, "max_tokens": 40, "temperature": 0, **sampler}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    text, rest = response.json()["choices"][0]["text"], PASSAGE[CUT:]
    length = 0
    while length < min(len(text), len(rest)) and text[length] == rest[length]:
        length += 1
    return length


def test_dry_suppresses_a_planted_verbatim_repetition(client):
    without = copied_characters(client, dry_multiplier=0)
    with_card_dry = copied_characters(client)  # the server's defaults are the card's: DRY 0.8 / 1.75 / 2
    assert without > 100
    assert with_card_dry < without / 4


CARD_VARIANTS = [
    {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": 0},
    {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_range": 0},
    {"dry_sequence_breakers": ["\n", ":", '"', "*", "::::"]},
    {"dry_sequence_breakers": json.dumps(["\n", ":", '"', "*", "::::"])},
    {"dry_sequence_breakers": '"\\n", ":", "\\"", "*", "::::"'},
    {"dry_sequence_breakers": "\\n, :, *, ::::"},
    {"max_new_tokens": 4, "stopping_strings": ["\n\n"]},
    {"n_predict": 4, "stop": "\n\n"},
    {"sampler_seed": 5},
    {"rep_pen": 1.0, "rep_pen_range": 0},
    {"repeat_penalty": 1.0, "repeat_last_n": 0},
    {"repetition_penalty": 1.0, "repetition_penalty_range": 0},
    {
        "sampler_priority": ["repetition_penalty", "dry", "temperature", "top_k", "top_p", "min_p"],
        "temperature_last": True,
    },
    {"samplers": ["penalties", "dry", "top_k", "top_p", "min_p", "temperature"]},
    {"sampler_order": [6, 0, 1, 3, 4, 2, 5]},
    {"custom_token_bans": "2", "ban_eos_token": True, "min_length": 2},
    {"logit_bias": [[5, 1.0]]},
]


@pytest.mark.parametrize("variant", CARD_VARIANTS)
def test_card_settings_accepted_under_every_name(client, variant):
    body = {"prompt": "::::user:Anon: Hello.\n\n::::assistant:Nanashi:", "temperature": 1.0, "min_p": 0.05, **variant}
    body.setdefault("max_tokens", 4)
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text


def generation_bodies() -> list[tuple[str, dict]]:
    bodies = []
    for fixture in sorted(FIXTURES.glob("*.json")):
        for sent in json.loads(fixture.read_text())["requests_sent_to_backend"]:
            if sent["path"] == "/v1/completions" and (sent["body"].get("n") or 1) == 1:
                bodies.append((fixture.stem, sent["body"]))
    return bodies


@pytest.mark.parametrize(("name", "body"), generation_bodies(), ids=[name for name, _ in generation_bodies()])
def test_sillytavern_generation_bodies_are_served(client, name, body):
    response = client.post("/v1/completions", json={**body, "max_tokens": 8, "max_new_tokens": 8, "stream": False})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sampler_priority", ["min_p", "warp_drive"]),
        ("samplers", ["bogus"]),
        ("sampler_order", [42]),
        ("dry_allowed_length", 0),
        ("dry_base", 0.5),
        ("dry_multiplier", -1),
        ("dry_sequence_breakers", [str(i) for i in range(40)]),
    ],
)
def test_bad_sampler_values_are_a_400_naming_the_field(client, field, value):
    response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, field: value})
    assert_openai_error(response, 400, param=field)


def test_banning_a_token_the_vocabulary_lacks_bans_nothing(client):
    response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "custom_token_bans": "128009"})
    assert response.status_code == 200, response.text
