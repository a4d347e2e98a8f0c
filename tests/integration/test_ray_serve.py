"""Two model replicas on a local Ray cluster (no GPU): both serve, streams come through Serve, a client that
leaves cancels its generation, the API key holds, and the turns of one conversation land on one replica."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.endless import endless_request
from tests.integration.server_process import ROOT, free_port
from tests.integration.sse import data_events, streamed_text

pytestmark = [pytest.mark.ray, pytest.mark.slow]
KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STALL_SECONDS = 300  # start-up that logs nothing new for this long is stuck


@pytest.fixture(scope="module")
def ray_url():
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="rpserve-ray-", suffix=".log", delete=False)  # noqa: SIM115
    env = {
        **{name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"},  # a cluster of its own
        "RPSERVE_RAY_MIN_REPLICAS": "2",
        "RPSERVE_RAY_MAX_REPLICAS": "2",
        "RPSERVE_RAY_GPUS_PER_REPLICA": "0",
        "RPSERVE_RAY_CPUS_PER_REPLICA": "0.5",
        "RPSERVE_API_KEY": KEY,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "server.ray_serve", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    # Ray, its replicas and their models start at the machine's pace: wait as long as the start-up log grows.
    output, grown_at = "", time.monotonic()
    while "rpserve-ray: serving" not in output:
        latest = Path(log.name).read_text(errors="replace")
        if latest != output:
            output, grown_at = latest, time.monotonic()
        if process.poll() is not None or time.monotonic() - grown_at > STALL_SECONDS:
            process.kill()
            pytest.fail(f"Ray Serve did not start:\n{output[-3000:]}")
        time.sleep(0.5)
    yield url
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def complete(url: str, prompt: str, **extra: object) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=120)


def test_both_replicas_serve(ray_url):
    seen = set()
    for i in range(24):
        response = complete(ray_url, f"Chat {i}: the keeper climbs the stairs at dusk")
        assert response.status_code == 200
        seen.add(response.headers["x-replica-id"])
        if len(seen) == 2:
            break
    assert len(seen) == 2


def test_the_turns_of_one_conversation_land_on_one_replica(ray_url):
    for chat in range(4):
        prompt = f"::::user:Anon: Chat {chat}. The fog rolls over the harbour; the bell rings.\n\n::::assistant:Greta:"
        first = complete(ray_url, prompt)
        reply = first.json()["choices"][0]["text"]
        follow_up = complete(ray_url, f"{prompt} {reply}\n\n::::user:Anon: And then?\n\n::::assistant:Greta:")
        swipe = complete(ray_url, prompt)
        assert first.headers["x-replica-id"] == follow_up.headers["x-replica-id"] == swipe.headers["x-replica-id"]


def test_streaming_through_serve(ray_url):
    body = {"prompt": "Once upon a time", "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{ray_url}/v1/completions", json=body, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(data_events(response.iter_lines()))
    assert events[-1] == "[DONE]" and streamed_text(events)
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_the_api_key_holds(ray_url):
    refused = httpx.post(f"{ray_url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{ray_url}/health", timeout=60).status_code == 200


def test_a_client_that_leaves_cancels_its_generation(ray_url):
    pinned = {**AUTH, "X-Conversation-ID": "leaving-client"}  # /health then reaches the same replica
    body = endless_request(max_tokens=5000, stream=True)
    with httpx.stream("POST", f"{ray_url}/v1/completions", json=body, headers=pinned, timeout=120) as response:
        for _ in zip(range(4), data_events(response.iter_lines()), strict=False):
            pass
        replica = response.headers["x-replica-id"]
    deadline = time.monotonic() + 20
    while True:
        health = httpx.get(f"{ray_url}/health", headers=pinned, timeout=30)
        assert health.headers["x-replica-id"] == replica
        if (health.json()["running"], health.json()["running_caches"]) == (0, 0):
            break
        assert time.monotonic() < deadline, health.json()
        time.sleep(0.2)
