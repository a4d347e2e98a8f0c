"""Fuzzing every route from the server's own OpenAPI schema (schemathesis): whatever a client sends, the answer
comes in bounded time, is never a 5xx, and every error is in OpenAI's shape. The app runs in this process on a
real uvicorn server with an engine that answers at once (instant_engine.py): what is fuzzed is the HTTP side,
routes, protocol, serving and middleware, whose every answer then costs milliseconds."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings

from server.app import create_app
from server.settings import Settings
from tests.integration.instant_engine import InstantEngine
from tests.integration.server_process import free_port

EXAMPLES_PER_ROUTE = 12
# Text schemathesis never generates (it cannot send lone surrogates itself): added to every string of a body.
ODD_TEXTS = ("\ud800", "\x00", "x\udfff", "\uffff\x00", "\U0010ffff", "\ud83d")

# The schema the server publishes at /openapi.json, built without loading a model, so that pytest can make one
# test per route when it collects them.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@dataclass
class InProcessServer:
    url: str
    client: httpx.Client  # one for every request sent by hand: a client per request costs its TLS set-up


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[InProcessServer]:
    settings = Settings(max_running=4, max_queued=64)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=InstantEngine()), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="fuzzed-server")
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the in-process server did not start"
        time.sleep(0.01)
    with httpx.Client(timeout=30) as client:
        yield InProcessServer(f"http://127.0.0.1:{port}", client)
    server.should_exit = True
    thread.join()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_any_request_gets_a_bounded_answer_that_is_not_a_5xx(fuzzed_server, case):
    try:
        response = case.call(base_url=fuzzed_server.url, timeout=30)
    except requests.Timeout:  # schemathesis calls through `requests`
        pytest.fail(f"no answer within 30 s to {case.method} {case.path}")
    assert_well_formed(response.status_code, response.text, case)
    if isinstance(case.body, dict | list):
        # Sent by hand: schemathesis re-validates a body it sends and cannot encode lone surrogates.
        odd = ODD_TEXTS[len(repr(case.body)) % len(ODD_TEXTS)]
        body = json.dumps(with_odd_text(case.body, odd))  # ASCII, surrogates as \u escapes
        url = f"{fuzzed_server.url}{case.formatted_path}"
        try:
            odd_response = fuzzed_server.client.request(
                case.method, url, content=body, params=case.query or None, headers={"Content-Type": "application/json"}
            )
        except httpx.TimeoutException:
            pytest.fail(f"no answer within 30 s to {case.method} {case.path} with odd text")
        assert_well_formed(odd_response.status_code, odd_response.text, case)


def assert_well_formed(status: int, text: str, case: schemathesis.Case) -> None:
    assert status < 500, (case.method, case.formatted_path, case.body, text[:300])
    if status >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


def with_odd_text(value: object, odd: str) -> object:
    """`value` with `odd` appended to every string in it, object keys included."""
    if isinstance(value, str):
        return value + odd
    if isinstance(value, dict):
        return {with_odd_text(key, odd): with_odd_text(item, odd) for key, item in value.items()}
    if isinstance(value, list):
        return [with_odd_text(item, odd) for item in value]
    return value
