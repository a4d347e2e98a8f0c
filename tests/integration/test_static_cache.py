"""`--static-cache` (pre-allocated batch cache) gives the same greedy tokens as the default dynamic cache, for
concurrent requests, swipes from the prefix cache and `n` > 1; its context is bounded by its slots' width.

Attention over a wider (masked) cache sums in another order, so logits differ in the last float bits and a
near-tie can flip a greedy choice some tokens in: the comparison is over the first tokens, with their logprobs
(tests/unit/test_batched_decode.py checks exact equality on a small model)."""

import concurrent.futures

import httpx
import pytest

from tests.integration.server_process import ServerProcess

PROMPTS = ["The lighthouse keeper", "In the harbour, the ships", "A story about a bell: it rang"]


@pytest.fixture(scope="module")
def static_server():
    server = ServerProcess(
        "--static-cache", "--kv-cache-mb", "400", "--prefix-cache-mb", "100", "--max-running", "4"
    ).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dynamic_server():
    server = ServerProcess("--kv-cache-mb", "400", "--prefix-cache-mb", "100", "--max-running", "4").wait_ready()
    yield server
    server.stop()


def greedy_texts(url: str, **extra: object) -> list[list[tuple[str, list[float]]]]:
    def one(prompt: str) -> list[tuple[str, list[float]]]:
        body = {"prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 0, **extra}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return [(c["text"], c["logprobs"]["token_logprobs"]) for c in response.json()["choices"]]

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(one, PROMPTS))


def same(got: list, expected: list) -> bool:
    return all(
        text == expected_text and logprobs == pytest.approx(expected_logprobs, abs=1e-3)
        for samples, expected_samples in zip(got, expected, strict=True)
        for (text, logprobs), (expected_text, expected_logprobs) in zip(samples, expected_samples, strict=True)
    )


def test_static_and_dynamic_caches_give_the_same_tokens(static_server, dynamic_server):
    dynamic = greedy_texts(dynamic_server.url)
    assert same(greedy_texts(static_server.url), dynamic)
    assert same(greedy_texts(static_server.url), dynamic)  # again: now from the prefix cache
    assert same(greedy_texts(static_server.url, n=2), [samples * 2 for samples in dynamic])
    health = static_server.settled_health()
    assert (health["running"], health["running_caches"]) == (0, 0)


def test_the_context_is_what_a_slot_holds(static_server):
    # 400 MiB of 45 KiB tokens, less the 100 MiB prefix cache, in 4 slots: 1,706 positions, one kept free.
    model = httpx.get(f"{static_server.url}/v1/models").json()["data"][0]
    assert model["max_model_len"] == 1705
    too_long = httpx.post(f"{static_server.url}/v1/completions", json={"prompt": "word " * 1800, "max_tokens": 4})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
