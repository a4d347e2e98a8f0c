"""With a KV budget too small for two requests at once, the second waits for the first instead of failing; a
request bigger than the whole budget still runs, alone. Sized in tokens reserved, not generated: each request
generates a few tokens, and the tests wait on the server's progress, never on the clock."""

import threading

import httpx
import pytest

from server.engine.kv.bucket_cache import bucket_widths, width_for
from server.engine.kv.budget import GENERATION_RESERVE_TOKENS
from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess
from tests.integration.sse import data_events

# SmolLM2-135M holds 45 KiB of KV cache per token (float32): 115 MiB is 2,616 tokens. A request that may generate
# without limit is counted for its prompt and the generation reserve, in the bucket that holds them (2,496
# positions); a short request for a bucket of 256: one of each does not fit.
BUDGET_MB = 115
BUDGET_TOKENS = BUDGET_MB * 2**20 // (45 * 1024)
WIDTHS = bucket_widths(8192)  # SmolLM2's context


@pytest.fixture(scope="module")
def small_server():
    server = ServerProcess("--kv-cache-mb", str(BUDGET_MB)).wait_ready()
    yield server
    server.stop()


def post_in_background(url: str, body: dict) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def post() -> None:
        answer["response"] = httpx.post(f"{url}/v1/completions", json=body, timeout=None)

    thread = threading.Thread(target=post)
    thread.start()
    return thread, answer


def test_a_request_that_does_not_fit_waits_for_room(small_server):
    endless = width_for(5 + GENERATION_RESERVE_TOKENS + 1, WIDTHS)  # a prompt of about five tokens
    assert endless <= BUDGET_TOKENS < endless + width_for(5 + 8 + 1, WIDTHS)
    url = small_server.url
    with httpx.stream("POST", f"{url}/v1/completions", json=endless_request(stream=True), timeout=None) as first:
        events = data_events(first.iter_lines())
        next(events)
        waiter, second = post_in_background(url, endless_request(max_tokens=8))
        small_server.wait_while_working(
            lambda: (small_server.health()["running"], small_server.health()["waiting"]) != (1, 1)
        )
        next(events)  # the first still streams while the second waits
        assert small_server.health()["waiting"] == 1
    # The first's client left: it ends, and the second gets its room.
    small_server.wait_while_working(waiter.is_alive)
    response = second["response"]
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 8
    assert small_server.settled_health()["running"] == 0


def test_a_request_bigger_than_the_budget_runs_alone(small_server):
    prompt = " once" * BUDGET_TOKENS  # more prompt tokens than the whole budget holds
    waiter, answer = post_in_background(small_server.url, endless_request(prompt, max_tokens=8))
    small_server.wait_while_working(waiter.is_alive)
    response = answer["response"]
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] > BUDGET_TOKENS
    assert response.json()["usage"]["completion_tokens"] == 8
