"""A fault in one request fails that request alone, frees what it held, and the others finish exactly as they
would have without it. Faults are injected by tests/integration/faulty_server.py."""

import threading

import httpx
import pytest

from tests.integration.sse import data_events

HEALTHY = ["The weather today is", "My favourite recipe uses"]
# Longer than the healthy prompts: an out-of-memory decode step fails the longest request.
FAULTY_PROMPT = "FAULT:{kind} " + "The knight rode through the forest at dawn. " * 20


@pytest.fixture(scope="module")
def faulty_server(shared_server):
    return shared_server("--max-running", "4", module="tests.integration.faulty_server")


def complete(url: str, prompt: str, results: dict, key: str, **extra: object) -> None:
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, **extra}
    results[key] = httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def stream_events(url: str, prompt: str, results: dict) -> None:
    body = {"prompt": prompt, "max_tokens": 40, "temperature": 0, "ban_eos_token": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        results["faulty"] = list(data_events(response.iter_lines()))


@pytest.fixture(scope="module")
def alone(faulty_server) -> list[str]:
    """What each healthy prompt gives with nothing else running."""
    results: dict = {}
    for i, prompt in enumerate(HEALTHY):
        complete(faulty_server.url, prompt, results, str(i))
    return [results[str(i)].json()["choices"][0]["text"] for i in range(len(HEALTHY))]


@pytest.mark.parametrize("kind", ["nan", "sampler", "oom", "prefill-oom"])
def test_a_fault_fails_its_request_alone(faulty_server, alone, kind):
    before = faulty_server.health()["failed_requests"]
    results: dict = {}
    threads = [
        threading.Thread(target=stream_events, args=(faulty_server.url, FAULTY_PROMPT.format(kind=kind), results)),
        *(
            threading.Thread(target=complete, args=(faulty_server.url, prompt, results, str(i)))
            for i, prompt in enumerate(HEALTHY)
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    errors = [event for event in results["faulty"] if isinstance(event, dict) and "error" in event]
    assert len(errors) == 1, results["faulty"]
    assert errors[0]["error"]["type"] == "server_error"
    assert errors[0]["error"]["message"].startswith("generation failed")
    for i in range(len(HEALTHY)):
        assert results[str(i)].status_code == 200
        assert results[str(i)].json()["choices"][0]["text"] == alone[i]
    health = faulty_server.settled_health()
    assert (health["running"], health["waiting"], health["running_caches"]) == (0, 0, 0)
    assert health["failed_requests"] == before + 1


def test_a_fault_in_a_plain_request_answers_500_in_openai_shape(faulty_server):
    response = httpx.post(
        f"{faulty_server.url}/v1/completions",
        json={"prompt": "FAULT:nan tell me a story", "max_tokens": 20, "ban_eos_token": True},
        timeout=60,
    )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "invalid logits" in error["message"]
    # And the server goes on serving.
    again = httpx.post(f"{faulty_server.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
    assert again.status_code == 200
