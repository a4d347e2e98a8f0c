"""Limits: too much in one request is a 400 naming the field; a full server answers 429 at once; an oversized
body is a 413 before it is read."""

import httpx
import pytest

from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess
from tests.integration.sse import data_events
from tests.integration.test_errors import assert_openai_error


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"stop": [f"s{i}" for i in range(33)]}, "stop"),
        ({"stop": ["x" * 300]}, "stop"),
        ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
        ({"banned_strings": ["y" * 300]}, "banned_strings"),
    ],
)
def test_request_limits_name_the_field(client, change, param):
    response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, **change})
    assert_openai_error(response, 400, param=param)


@pytest.fixture(scope="module")
def small_server():
    # A KV cache of its own size, not a share of what the loaded machine has free: the endless request must fit.
    process = ServerProcess(
        "--max-running", "1", "--max-queued", "0", "--max-body-mb", "0.01", "--kv-cache-mb", "512"
    ).wait_ready()
    yield process
    process.stop()


def test_full_server_answers_429_at_once_and_recovers(small_server):
    endless = endless_request(max_tokens=3000)
    with (
        httpx.Client(base_url=small_server.url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json={**endless, "stream": True}) as running,
    ):
        # Held, not a temporary: a reader generator that is collected closes the response's connection, and the
        # server then cancels the stream (seen: the busy request was answered 200 after the stream's first token).
        events = data_events(running.iter_lines())
        first = next(events)
        assert first["choices"][0]["finish_reason"] is None, first  # still running when the next request comes
        busy = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=5)
        if busy.status_code != 429:
            rest = list(events)
            raise AssertionError(f"{busy.text}\n{rest[-3:]}\n{len(rest)}\n{small_server.output()[-6000:]}")
        error = assert_openai_error(busy, 429, code="server_busy")
        assert busy.headers["retry-after"] == "1" and "busy" in error["message"]
    answer = httpx.post(f"{small_server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    for _ in range(100):  # the abandoned stream is dropped at the engine's next step
        if answer.status_code == 200:
            break
        answer = httpx.post(f"{small_server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert answer.status_code == 200


def test_oversized_body_is_413(small_server):
    response = httpx.post(f"{small_server.url}/v1/completions", json={"prompt": "x" * 20_000}, timeout=30)
    assert_openai_error(response, 413, code="body_too_large")
