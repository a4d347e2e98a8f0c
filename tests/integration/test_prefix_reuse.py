"""Prefix-cache reuse through the server: a swipe prefills one token, a follow-up turn only its new tokens, and
both give the same greedy tokens as a cold start."""

import httpx
import pytest

from tests.integration.server_process import ServerProcess

HISTORY = "".join(
    f'\n\n::::user:Anon: "Line {i}," said Anon.\n\n::::assistant:Greta: Greta nodded {i} times.' for i in range(25)
)
GREEDY = {"max_tokens": 12, "temperature": 0, "stop": []}


@pytest.fixture(scope="module")
def cold_server():
    process = ServerProcess("--prefix-cache-mb", "0").wait_ready()
    yield process
    process.stop()


def test_swipe_and_follow_up_reuse_the_cache(client, server, cold_server):
    prompt = HISTORY + "\n\n::::user:Anon: And now?\n\n::::assistant:Greta:"
    first = client.post("/v1/completions", json={"prompt": prompt, **GREEDY}).json()
    before = server.health()
    swipe = client.post("/v1/completions", json={"prompt": prompt, **GREEDY}).json()
    after = server.health()
    assert swipe["choices"][0]["text"] == first["choices"][0]["text"]
    assert after["prefilled_tokens"] - before["prefilled_tokens"] == 1
    assert after["reused_tokens"] - before["reused_tokens"] == first["usage"]["prompt_tokens"] - 1

    follow_up = prompt + first["choices"][0]["text"] + "\n\n::::user:Anon: Really?\n\n::::assistant:Greta:"
    before = server.health()
    warm = client.post("/v1/completions", json={"prompt": follow_up, **GREEDY}).json()
    after = server.health()
    new_tokens = warm["usage"]["prompt_tokens"] - first["usage"]["prompt_tokens"] - first["usage"]["completion_tokens"]
    # Only the new turn (plus at most a couple of tokens re-split at the joint) is prefilled.
    assert after["prefilled_tokens"] - before["prefilled_tokens"] <= new_tokens + 3
    cold = cold_server_answer(cold_server, follow_up)
    assert warm["choices"][0]["text"] == cold
    assert server.settled_health()["running_caches"] == 0


def cold_server_answer(cold_server: ServerProcess, prompt: str) -> str:
    response = httpx.post(f"{cold_server.url}/v1/completions", json={"prompt": prompt, **GREEDY}, timeout=300)
    assert cold_server.health()["reused_tokens"] == 0
    return response.json()["choices"][0]["text"]
