"""`--decode-mode captured` (on the CPU: the padded step a CUDA graph records, run directly) gives the same greedy
tokens as eager, for concurrent requests, swipes from the prefix cache and `n` > 1; a captured step that differs
is caught by the start-up self-check, and the server serves eager with one warning. That server is the eager one
the captured one is compared with.

Attention over a bucket's whole (masked) width sums in another order, so logits differ in the last float bits and
a near-tie could flip a greedy choice: the comparison is of texts and logprobs within 1e-3
(tests/unit/test_batched_decode.py checks the tokens on a small model exactly)."""

import concurrent.futures

import httpx
import pytest

from tests.integration.server_process import ServerProcess

PROMPTS = ["The lighthouse keeper", "In the harbour, the ships", "A story about a bell: it rang"]
FLAGS = ("--kv-cache-mb", "400", "--prefix-cache-mb", "100", "--max-running", "4")


@pytest.fixture(scope="module")
def captured_server():
    server = ServerProcess("--decode-mode", "captured", *FLAGS).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def eager_server():
    """Asked for captured decode, whose steps are broken on purpose (off by 0.5): the self-check finds it, and the
    server serves eager."""
    server = ServerProcess("--decode-mode", "captured", *FLAGS, module="tests.integration.capture_fault_server")
    yield server.wait_ready()
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


def test_captured_and_eager_decode_give_the_same_tokens(captured_server, eager_server):
    eager = greedy_texts(eager_server.url)
    assert same(greedy_texts(captured_server.url), eager)
    assert same(greedy_texts(captured_server.url), eager)  # again: now from the prefix cache
    assert same(greedy_texts(captured_server.url, n=2), [samples * 2 for samples in eager])
    health = captured_server.settled_health()
    assert (health["decode_mode"], health["running_caches"]) == ("captured", 0)
    assert eager_server.health()["decode_mode"] == "eager"
    assert "decode: captured (self-check passed)" in captured_server.output()


def test_a_captured_step_that_differs_leaves_the_server_serving_eager(eager_server):
    """One smoke test at the server: every way the self-check fails (a capture that raises, NaN, a rolled
    vocabulary, a small difference) is tested on the model runner in tests/unit/test_batched_decode.py."""
    assert eager_server.health()["decode_mode"] == "eager"
    warnings = [line for line in eager_server.output().splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert "captured decode failed its self-check (step 0: logits differ by 0.5 (tolerance" in warnings[0]
    assert "serving eager decode steps" in warnings[0]
