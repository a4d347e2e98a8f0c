"""Fuzzing every route from the server's own OpenAPI schema (schemathesis): whatever a client sends, the answer
comes in bounded time, is never a 5xx, and every error is in OpenAI's shape. The example count is bounded so that
CI stays fast; `--request-timeout` bounds the generations that random `max_tokens` values ask for."""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from server.app import create_app
from server.settings import Settings
from tests.integration.server_process import ServerProcess

EXAMPLES_PER_ROUTE = 12

# The schema the server publishes at /openapi.json, built without loading a model, so that pytest can make one
# test per route when it collects them.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.fixture(scope="module")
def fuzzed_server():
    server = ServerProcess("--request-timeout", "1", "--max-running", "4", "--max-queued", "64").wait_ready()
    yield server
    assert server.stop() == 0


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
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
