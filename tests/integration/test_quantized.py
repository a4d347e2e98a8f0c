"""A server with `--quantization int8 --kv-cache-dtype int8`: it reports its load-time check and memory plan,
and streams, stops, reuses prefixes, samples n > 1, backs off banned strings and reproduces seeded swipes read
from the 8-bit prefix cache as the unquantized one does; a server with `--quantization int4
--kv-cache-dtype fp8` reports its check and generates."""

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.server_process import ServerProcess
from tests.integration.sse import stream, streamed_text

PROMPT = '\n\n::::user:Anon: "Where does the stair lead?"\n\n::::assistant:Greta:'


@pytest.fixture(scope="module")
def int8_server() -> Iterator[ServerProcess]:
    server = ServerProcess("--quantization", "int8", "--kv-cache-dtype", "int8").wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(int8_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=int8_server.url, timeout=120) as http:
        yield http


def test_health_and_the_log_report_the_check(client, int8_server):
    health = client.get("/health").json()
    assert health["quantization"] == "int8"
    assert 0 <= health["quantization_kl"] < 0.05 and health["quantization_top1"] >= 0.9
    assert "quantization int8: 210 linear layers; on the probe, mean KL" in int8_server.output()


def test_health_and_the_log_give_the_memory_plan_in_8_bit_kv_bytes(client, int8_server):
    """SmolLM2-135M: 30 layers, 3 key/value heads of 64; 8-bit codes and an exponent byte per head and token."""
    memory = client.get("/health").json()["memory"]
    assert memory["kv_cache_dtype"] == "int8" and memory["kv_bytes_per_token"] == 2 * 30 * 3 * 65
    # 538 MB in float32; int8 leaves the float32 embedding (tied to the LM head, 113 MB) and 106 MB of decoder.
    assert memory["quantization"] == "int8" and 200_000_000 < memory["weights_bytes"] < 240_000_000
    assert memory["kv_budget_tokens"] == memory["kv_budget_bytes"] // memory["kv_bytes_per_token"]
    assert memory["chat_tokens"] == 8192 and memory["chats"] >= 1
    summary = f"KV cache (int8) {memory['kv_budget_bytes'] / 2**20:,.0f} MiB at 11,700 bytes a token"
    assert summary in int8_server.output()


def test_seeded_output_repeats_and_streams_the_same(client):
    """The prompt's cache is read back from the 8-bit prefix cache for the second request on. The first request is
    not compared: on the CPU the int8 kernel takes bfloat16 activations, and its last prompt position, computed
    with the whole prompt there and alone from the cache, can round differently (README, "Quantization")."""
    body = {"prompt": PROMPT, "max_tokens": 12, "seed": 7}
    client.post("/v1/completions", json=body)
    swipe = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    again = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert swipe == again and swipe
    assert streamed_text(stream(client, "/v1/completions", body)) == swipe


def test_stop_strings_and_n(client):
    greedy = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    text = client.post("/v1/completions", json=greedy).json()["choices"][0]["text"]
    word = text.split()[1]
    stopped = client.post("/v1/completions", json={**greedy, "stop": [word]}).json()["choices"][0]
    assert stopped["text"] == text[: text.index(word)] and stopped["finish_reason"] == "stop"
    samples = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, "n": 2, "seed": 3}).json()
    assert [choice["index"] for choice in samples["choices"]] == [0, 1]


def test_a_follow_up_reuses_the_prefix(client):
    before = client.get("/health").json()["reused_tokens"]
    body = {"prompt": PROMPT * 4, "max_tokens": 4, "seed": 1}
    answer = client.post("/v1/completions", json=body).json()
    follow_up = {**body, "prompt": body["prompt"] + answer["choices"][0]["text"] + PROMPT}
    client.post("/v1/completions", json=follow_up)
    assert client.get("/health").json()["reused_tokens"] - before >= answer["usage"]["prompt_tokens"] - 1


def test_banned_strings_back_off(client):
    greedy = {"prompt": PROMPT, "max_tokens": 20, "temperature": 0}
    plain = client.post("/v1/completions", json=greedy).json()["choices"][0]["text"]
    banned = plain.split()[2]
    guarded = client.post("/v1/completions", json={**greedy, "banned_strings": [banned]}).json()["choices"][0]
    assert banned not in guarded["text"] and guarded["text"].startswith(plain[: plain.index(banned) - 1])


def test_an_int4_server_reports_its_check_and_generates():
    server = ServerProcess("--quantization", "int4", "--int4-group-size", "32", "--kv-cache-dtype", "fp8").wait_ready()
    try:
        health = server.health()
        assert health["quantization"] == "int4" and health["memory"]["kv_cache_dtype"] == "fp8"
        # The embedded model's weights lie on a 4-bit grid in blocks of 32: groups of 32 keep it nearly as it is.
        assert health["quantization_kl"] < 0.01 and health["quantization_top1"] > 0.9
        assert "quantization int4: 210 linear layers" in server.output()
        # Not compared across requests: a prompt read from the prefix cache computes its last position alone, and
        # the bfloat16 activations the int4 kernel takes round that a little differently (README, int4).
        answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=120)
        choice = answer.json()["choices"][0]
        assert (
            choice["text"] and choice["finish_reason"] == "length" and answer.json()["usage"]["completion_tokens"] == 8
        )
        with httpx.Client(base_url=server.url, timeout=120) as http:
            assert streamed_text(stream(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8}))
    finally:
        server.stop()
