"""One log line per request, with its id, status, duration and token counts, and no prompt or output text."""

import json
import time

import httpx

from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess

SECRET = "The password is swordfish-7731"


def test_request_id_is_honoured_and_logged_without_content(client, server):
    body = {"prompt": SECRET, "max_tokens": 5, "seed": 1}
    response = client.post("/v1/completions", json=body, headers={"X-Request-ID": "req-plain-1"})
    assert response.headers["x-request-id"] == "req-plain-1"
    record = server.log_record("req-plain-1")
    assert record["status"] == 200 and record["path"] == "/v1/completions"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        response.json()["usage"]["prompt_tokens"],
        5,
    )
    assert record["finish_reasons"] == ["length"]
    assert SECRET not in server.output()


def test_streamed_requests_are_logged_when_the_stream_ends(client, server):
    with client.stream(
        "POST",
        "/v1/completions",
        json={"prompt": SECRET, "max_tokens": 4, "stream": True},
        headers={"X-Request-ID": "req-stream-1"},
    ) as response:
        assert response.headers["x-request-id"] == "req-stream-1"
        list(response.iter_lines())
    record = server.log_record("req-stream-1")
    assert record["completion_tokens"] == 4 and record["status"] == 200 and record["finish_reasons"] == ["length"]
    assert 0 < record["first_byte_ms"] <= record["duration_ms"]


def test_an_id_is_made_when_none_or_a_bad_one_is_sent(client, server):
    made = client.get("/v1/models").headers["x-request-id"]
    assert len(made) == 32
    odd = client.get("/v1/models", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert odd != "bad id\twith spaces"
    refused = client.post("/v1/completions", json={"temperature": -1}, headers={"X-Request-ID": "req-bad-1"})
    assert server.log_record("req-bad-1")["status"] == refused.status_code == 400


def test_a_client_that_leaves_mid_stream_is_still_logged(client, server):
    with client.stream(
        "POST",
        "/v1/completions",
        json=endless_request(stream=True),
        headers={"X-Request-ID": "req-left-1"},
    ) as response:
        next(response.iter_lines())
    record = server.log_record("req-left-1")
    assert record["status"] == 200 and record["finish_reasons"] == ["cancelled"]


def test_log_content_logs_prompt_and_output_under_the_request_id():
    server = ServerProcess("--log-content").wait_ready()
    try:
        body = {"prompt": SECRET, "max_tokens": 4, "seed": 1}
        text = httpx.post(f"{server.url}/v1/completions", json=body, headers={"X-Request-ID": "req-debug-1"}).json()
        deadline = time.monotonic() + 10
        while "rpserve.content" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        line = next(line for line in server.output().splitlines() if "rpserve.content" in line)
        record = json.loads(line[line.index("{") :])
        assert record["request_id"] == "req-debug-1" and record["prompt"].endswith(SECRET)
        assert record["output"] == text["choices"][0]["text"]
    finally:
        server.stop()
