"""With a KV budget too small for two requests at once, the second waits for the first instead of failing; a
request bigger than the whole budget still runs, alone."""

import threading
import time

import httpx
import pytest

from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess
from tests.integration.sse import data_events

# SmolLM2-135M holds 45 KiB of KV cache per token: 32 MiB is 728 tokens, less than two requests of ~405.
BUDGET_MB = "32"


@pytest.fixture(scope="module")
def small_server():
    server = ServerProcess("--kv-cache-mb", BUDGET_MB).wait_ready()
    yield server
    server.stop()


def test_a_request_that_does_not_fit_waits_for_room(small_server):
    url = small_server.url
    second: dict = {}

    def run_second() -> None:
        body = endless_request(max_tokens=360)
        second["response"] = httpx.post(f"{url}/v1/completions", json=body, timeout=120)

    with httpx.stream("POST", f"{url}/v1/completions", json=endless_request(max_tokens=400, stream=True)) as first:
        events = data_events(first.iter_lines())
        next(events)
        waiter = threading.Thread(target=run_second)
        waiter.start()
        deadline = time.monotonic() + 20
        while (small_server.health()["running"], small_server.health()["waiting"]) != (1, 1):
            assert time.monotonic() < deadline, small_server.health()
            time.sleep(0.05)
        next(events)  # the first still streams while the second waits
    waiter.join(timeout=120)
    response = second["response"]
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 360
    assert small_server.settled_health()["running"] == 0


def test_a_request_bigger_than_the_budget_runs_alone(small_server):
    response = httpx.post(f"{small_server.url}/v1/completions", json=endless_request(max_tokens=740), timeout=120)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 740
