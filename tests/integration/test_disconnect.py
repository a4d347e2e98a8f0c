"""A client that goes away has its request dropped at the next step: the decoded-token counter stops."""

import time

import httpx

from tests import tokenizers
from tests.integration.sse import data_events

LONG = 4000


def never_ending(prompt: str) -> dict:
    """A request that would run for minutes: EOS and the label mark banned, a large max_tokens."""
    tokenizer = tokenizers.smollm2()
    (label_mark,) = tokenizer.encode("::::", add_special_tokens=False)
    bans = {str(tokenizer.eos_token_id): -100, str(label_mark): -100}
    return {"prompt": prompt, "max_tokens": LONG, "logit_bias": bans}


def wait_until_idle(server, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = server.health()
        if health["running"] == 0 and health["waiting"] == 0:
            return health
        time.sleep(0.05)
    raise AssertionError(f"request still running after the client left: {server.health()}")


def assert_generation_stopped(server, before: dict) -> None:
    idle = wait_until_idle(server)
    assert idle["running_caches"] == 0
    time.sleep(1.0)
    after = server.health()
    assert after["generated_tokens"] == idle["generated_tokens"]
    assert after["generated_tokens"] - before["generated_tokens"] < LONG // 4


def test_closing_a_stream_stops_generation(server):
    before = server.health()
    with (
        httpx.Client(base_url=server.url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json={**never_ending("Once upon a time"), "stream": True}) as response,
    ):
        events = data_events(response.iter_lines())
        for _ in range(3):
            next(events)
    assert_generation_stopped(server, before)


def test_abandoning_a_plain_request_stops_generation(server):
    before = server.health()
    try:
        httpx.post(f"{server.url}/v1/completions", json=never_ending("Once upon a time"), timeout=1.0)
    except httpx.ReadTimeout:
        pass
    else:
        raise AssertionError("the request should have outlived the client's timeout")
    assert server.health()["running"] <= 1
    assert_generation_stopped(server, before)
