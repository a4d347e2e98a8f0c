"""`--sampling-preset herrsimian-card`: whatever sampler values a client sends, the card's apply, and the answer
and the request log say which of the client's fields were replaced."""

import json

import httpx
import pytest

from tests.integration.server_process import ServerProcess
from tests.sillytavern import generation_body

PROMPT = "::::user: Let's engage together in a roleplay.\n\n::::user:Anon: Hello.\n\n::::assistant:Nanashi: "
CARD_BODY = {
    "temperature": 1.0,
    "min_p": 0.05,
    "dry_multiplier": 0.8,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_sequence_breakers": ["\n", ":", '"', "*", "::::"],
}


@pytest.fixture(scope="module")
def card_server():
    server = ServerProcess("--sampling-preset", "herrsimian-card").wait_ready()
    yield server
    server.stop()


def test_sillytavern_defaults_are_replaced_by_the_card_and_named(card_server):
    path, body = generation_body("ooba-nostream", {}, PROMPT)  # SillyTavern's own defaults: rep_pen 1.1, no DRY
    body |= {"max_tokens": 12, "max_new_tokens": 12, "seed": 5}
    request_id = "forced-1"
    forced = httpx.post(f"{card_server.url}{path}", json=body, headers={"X-Request-ID": request_id}, timeout=None)
    assert forced.status_code == 200, forced.text
    overridden = forced.headers["x-overridden-fields"].split(", ")
    assert {"temperature", "min_p", "repetition_penalty", "dry_multiplier", "dry_sequence_breakers"} <= set(overridden)
    card = {"prompt": PROMPT, "max_tokens": 12, "seed": 5, **CARD_BODY}
    as_card = httpx.post(f"{card_server.url}/v1/completions", json=card, timeout=None)
    assert forced.json()["choices"][0]["text"] == as_card.json()["choices"][0]["text"]
    card_server.wait_while_working(lambda: request_id not in card_server.output())
    (line,) = [line for line in card_server.output().splitlines() if request_id in line]
    assert json.loads(line.split(": ", 1)[1])["overridden_fields"] == overridden


def test_a_client_that_sends_no_sampler_fields_is_told_nothing(card_server):
    answer = httpx.post(f"{card_server.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=None)
    assert answer.status_code == 200 and "x-overridden-fields" not in answer.headers
