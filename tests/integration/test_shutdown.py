"""SIGTERM: the port stays open and new requests get 503, running requests get `--shutdown-timeout` to finish
(what is left then ends with an error event), and the process exits 0."""

import json
import signal
import threading
import time

import httpx

from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess
from tests.integration.sse import data_events


def read_stream(url: str, body: dict, events: list) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        try:
            events.extend(data_events(response.iter_lines()))
        except httpx.HTTPError:
            events.append("cut")


def wait_running(server: ServerProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while server.health()["running"] < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_sigterm_refuses_new_requests_cancels_the_rest_after_the_timeout_and_exits_0():
    server = ServerProcess("--shutdown-timeout", "3").wait_ready()
    events: list = []
    reader = threading.Thread(target=read_stream, args=(server.url, endless_request(max_tokens=5000), events))
    reader.start()
    wait_running(server, 1)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    while server.http.get("/health").status_code == 200:  # until the signal is handled: draining
        time.sleep(0.02)

    refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=10)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "shutting_down"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 503
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 200

    assert server.process.wait(timeout=30) == 0
    assert 1.5 <= time.monotonic() - started < 15  # the drain takes the timeout but its wind-down
    reader.join(timeout=10)
    texts = [e["choices"][0]["text"] for e in events if isinstance(e, dict) and e.get("choices")]
    assert "".join(texts), "the stream ran during the drain"
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert errors and "shutting down" in errors[0]["error"]["message"]
    assert errors[0]["error"]["code"] == "shutting_down"
    assert "Traceback" not in server.output()
    # The cancelled stream's log line says how much it had generated.
    (logged,) = [line for line in server.output().splitlines() if '"path": "/v1/completions", "status": 200' in line]
    record = json.loads(logged[logged.index("{") :])
    assert record["completion_tokens"] > 0 and record["prompt_tokens"] > 0


def test_requests_that_finish_within_the_timeout_are_delivered_whole():
    server = ServerProcess("--shutdown-timeout", "60").wait_ready()
    events: list = []
    body = {"prompt": "Once upon a time", "max_tokens": 40, "ban_eos_token": True}
    reader = threading.Thread(target=read_stream, args=(server.url, body, events))
    reader.start()
    wait_running(server, 1)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    # It exits as soon as the last request is done, not at the timeout.
    assert time.monotonic() - started < 30
    reader.join(timeout=10)
    finals = [e for e in events if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]]
    assert finals and finals[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1] == "[DONE]"
