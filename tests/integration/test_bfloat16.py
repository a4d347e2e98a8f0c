"""The server at its default precision (`--dtype auto`): bfloat16 on this CPU class when it has bf16 matrix
instructions, as on CUDA. The other integration tests run float32 to compare tokens exactly across batches; these
check that the bf16 path serves, batches and samples correctly."""

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.engine.model.loader import cpu_has_native_bf16
from tests.integration.server_process import ServerProcess
from tests.integration.sse import stream, streamed_text

PROMPT = '\n\n::::user:Anon: "Where does the stair lead?"\n\n::::assistant:Greta:'
CARD = {"temperature": 1.0, "min_p": 0.05, "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2}


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    server = ServerProcess(dtype="auto").wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(default_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=default_server.url, timeout=120) as http:
        yield http


def test_auto_picks_bfloat16_where_the_cpu_has_it(default_server):
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert f"on cpu ({expected})" in default_server.output()


def test_card_sampling_with_logprobs(client):
    response = client.post(
        "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": 16, "ignore_eos": True, "stop": [], "logprobs": 2, "seed": 5, **CARD},
    )
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    logprobs = choice["logprobs"]["token_logprobs"]
    assert choice["text"] and all(math.isfinite(value) and value <= 0 for value in logprobs)
    assert response.json()["usage"]["completion_tokens"] == len(logprobs)


def test_concurrent_streams_each_get_their_tokens(client, default_server):
    def one(seed: int) -> tuple[str, str]:
        events = stream(client, "/v1/completions", {"prompt": PROMPT, "max_tokens": 24, "seed": seed, **CARD})
        finish = [e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e["choices"]][-1]
        return streamed_text(events), finish

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert all(text and finish in ("length", "stop") for text, finish in results)
    health = default_server.settled_health()
    assert health["running"] == health["waiting"] == health["running_caches"] == 0
