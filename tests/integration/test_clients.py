"""What each client type relies on beyond plain generation: samples, logprobs, truncation, special tokens,
KoboldCpp's abort, the ignored-fields header, the API key, and the openai package itself."""

import json
import threading
import time

import httpx
import openai
import pytest

from tests import tokenizers
from tests.integration.endless import endless_request
from tests.integration.sse import stream

PROMPT = "The lighthouse keeper looked at the sea and said"


def test_n_samples_whole_and_streamed(client):
    body = {"prompt": PROMPT, "max_tokens": 8, "n": 2, "seed": 21}
    whole = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    single = client.post("/v1/completions", json={**body, "n": 1}).json()["choices"][0]["text"]
    assert whole["choices"][0]["text"] == single  # sample i draws with seed + i
    events = stream(client, "/v1/completions", body)
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(len(c["choices"]) == 1 for c in chunks)
    for index in (0, 1):
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == index)
        assert text == whole["choices"][index]["text"]
    chat = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "name": "Anon", "content": "Hi."}], "n": 2, "max_tokens": 4},
    ).json()
    assert [c["index"] for c in chat["choices"]] == [0, 1]


def test_completion_logprobs(client):
    body = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 6, "logprobs": 3, "seed": 1}).json()
    choice = body["choices"][0]
    scores = choice["logprobs"]
    assert len(scores["tokens"]) == len(scores["token_logprobs"]) == len(scores["top_logprobs"]) == 6
    assert "".join(scores["tokens"]) == choice["text"]
    assert all(lp <= 0 for lp in scores["token_logprobs"])
    assert all(len(top) <= 3 for top in scores["top_logprobs"])
    offsets = [sum(len(t) for t in scores["tokens"][:i]) for i in range(6)]
    assert scores["text_offset"] == offsets


def test_chat_logprobs(client):
    body = {"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4, "logprobs": True, "top_logprobs": 2}
    content = client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    assert all(len(entry["top_logprobs"]) == 2 and entry["logprob"] <= 0 for entry in content)


def test_truncation_length_cuts_from_the_left_keeping_bos(client):
    prompt = " ".join(f"word{i}" for i in range(200))
    body = client.post(
        "/v1/completions", json={"prompt": prompt, "max_tokens": 10, "truncation_length": 60, "temperature": 0}
    ).json()
    assert body["usage"]["prompt_tokens"] == 50
    kept = tokenizers.smollm2().encode(prompt, add_special_tokens=False)[-49:]
    direct = client.post(
        "/v1/completions",
        json={"prompt": tokenizers.smollm2().decode(kept), "max_tokens": 10, "temperature": 0},
    ).json()
    assert direct["choices"][0]["text"] == body["choices"][0]["text"]


def test_truncation_length_takes_a_prompt_longer_than_any_context(client):
    """A prompt too long for the context even at the longest token's length is refused before tokenizing, unless
    the request asks to cut it to `truncation_length`."""
    prompt = "The storm went on. " * 40_000  # 760,000 characters: over 8,192 tokens x 81 characters
    refused = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    cut = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, "truncation_length": 40})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 38


def test_skip_special_tokens(client):
    (end_of_text,) = tokenizers.smollm2().encode("<|endoftext|>", add_special_tokens=False)
    body = {"prompt": PROMPT, "max_tokens": 2, "logit_bias": {str(end_of_text): 100}}
    assert client.post("/v1/completions", json=body).json()["choices"][0]["text"] == ""
    shown = client.post("/v1/completions", json={**body, "skip_special_tokens": False}).json()
    assert shown["choices"][0]["text"] == "<|endoftext|><|endoftext|>"


def test_ignored_fields_are_listed_in_a_header(client):
    body = {"prompt": PROMPT, "max_tokens": 2, "num_beams": 1, "penalty_alpha": 0, "typical_p": 1, "rep_pen": 1.0}
    response = client.post("/v1/completions", json=body)
    assert response.headers["x-ignored-fields"] == "num_beams, penalty_alpha"
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as streamed:
        assert streamed.headers["x-ignored-fields"] == "num_beams, penalty_alpha"


def test_every_sampler_sillytavern_offers_is_applied_not_ignored(client):
    """XTC, smoothing, dynamic temperature, top-n-sigma and mirostat as SillyTavern's "Text Generation WebUI" type
    sends them: none is ignored, and a seeded request gives the same text twice."""
    body = {
        "prompt": PROMPT, "max_tokens": 12, "seed": 11, "xtc_threshold": 0.1, "xtc_probability": 0.5,
        "smoothing_factor": 0.2, "smoothing_curve": 1.5, "dynamic_temperature": True, "dynatemp_low": 0.5,
        "dynatemp_high": 1.5, "temperature": 1.0, "nsigma": 2.0, "top_n_sigma": 2.0, "typical_p": 0.95,
        "typical": 0.95, "tfs": 0.98, "top_a": 0.05, "epsilon_cutoff": 1, "eta_cutoff": 1, "mirostat_mode": 0,
        "mirostat": 0, "mirostat_tau": 5, "mirostat_eta": 0.1,
    }  # fmt: skip
    first, second = client.post("/v1/completions", json=body), client.post("/v1/completions", json=body)
    assert first.status_code == 200, first.text
    assert "x-ignored-fields" not in first.headers
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
    mirostat = {"prompt": PROMPT, "max_tokens": 12, "seed": 11, "mirostat_mode": 2, "mirostat_tau": 3}
    again = [client.post("/v1/completions", json=mirostat).json()["choices"][0]["text"] for _ in range(2)]
    assert again[0] == again[1]
    refused = client.post("/v1/completions", json={**mirostat, "mirostat_mode": 1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "mirostat_mode"


def test_ignored_fields_that_a_header_cannot_hold_are_percent_encoded(client):
    body = {"prompt": PROMPT, "max_tokens": 1, "Ā": 1, "a\nb": 2}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.headers["x-ignored-fields"] == "a%0Ab, %C4%80"


def test_kobold_abort_ends_that_clients_generation(server):
    body = endless_request(PROMPT, 3000, genkey="KCPP1234")
    result: dict = {}

    def generate() -> None:
        headers = {"X-Request-ID": "req-kobold-abort"}
        result["response"] = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=120)

    worker = threading.Thread(target=generate)
    started = time.monotonic()
    generated = server.health()["generated_tokens"]
    worker.start()
    # Aborted once it has generated something, so that the answer is the text so far, not an empty one.
    server.wait_while_working(lambda: server.health()["generated_tokens"] < generated + 2)
    assert httpx.post(f"{server.url}/api/extra/abort", json={"genkey": "KCPP1234"}).json()["success"] == "true"
    worker.join(timeout=30)
    answer = result["response"].json()
    assert result["response"].status_code == 200
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert 0 < answer["usage"]["completion_tokens"] < 3000
    assert time.monotonic() - started < 30
    # The client is told "stop" (OpenAI has no other word for it); the log tells the user stopped it.
    assert server.log_record("req-kobold-abort")["finish_reasons"] == ["cancelled"]


def test_llamacpp_native_completion(client):
    whole = client.post("/completion", json={"prompt": PROMPT, "n_predict": 5, "seed": 3}).json()
    assert whole["stop"] is True and whole["stop_type"] == "limit" and whole["tokens_predicted"] == 5
    with client.stream("POST", "/completion", json={"prompt": PROMPT, "n_predict": 5, "seed": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert "[DONE]" not in lines[-1]
    events = [json.loads(line.removeprefix("data:")) for line in lines]
    assert "".join(e["content"] for e in events) == whole["content"]
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
    tokens = tokenizers.smollm2().encode(PROMPT, add_special_tokens=False)
    by_ids = client.post("/completion", json={"prompt": tokens, "n_predict": 5, "seed": 3}).json()
    assert by_ids["content"] == whole["content"]
    long = " ".join(f"word{i}" for i in range(200))
    cut = client.post("/completion", json={"prompt": long, "n_predict": 4, "truncation_length": 40}).json()
    assert cut["tokens_evaluated"] == 36


@pytest.mark.parametrize("prompt", [[-1, 5], [5, 10**9], []])
def test_llamacpp_token_prompts_outside_the_vocabulary_or_empty_are_400s(client, prompt):
    response = client.post("/completion", json={"prompt": prompt, "n_predict": 2, "add_bos_token": False})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_api_key(keyed_server):
    url = keyed_server.url
    assert httpx.get(f"{url}/health").status_code == 200
    missing = httpx.get(f"{url}/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer secret"}).status_code == 200
    assert httpx.post(f"{url}/v1/token/encode", json={"text": "hi"}, headers={"x-api-key": "secret"}).status_code == 200
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="secret")
    assert sdk.completions.create(model="any", prompt="Hi", max_tokens=2).choices[0].finish_reason == "length"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope").models.list()


@pytest.fixture(scope="module")
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def test_openai_package_completions(sdk):
    whole = sdk.completions.create(model="m", prompt=PROMPT, max_tokens=6, seed=4, n=2, logprobs=2)
    assert len(whole.choices) == 2 and whole.choices[0].logprobs.token_logprobs
    pieces = sdk.completions.create(model="m", prompt=PROMPT, max_tokens=6, seed=4, stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces) == whole.choices[0].text


def test_openai_package_chat(sdk):
    messages = [{"role": "user", "name": "Anon", "content": "Hello there."}]
    whole = sdk.chat.completions.create(model="m", messages=messages, max_tokens=6, seed=4)
    assert whole.choices[0].message.role == "assistant"
    pieces = sdk.chat.completions.create(model="m", messages=messages, max_tokens=6, seed=4, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in pieces) == whole.choices[0].message.content
    logged = sdk.chat.completions.create(model="m", messages=messages, max_tokens=3, logprobs=True, top_logprobs=1)
    assert len(logged.choices[0].logprobs.content) == 3


def test_openai_package_raises_its_own_errors(sdk):
    with pytest.raises(openai.BadRequestError) as error:
        sdk.completions.create(model="m", prompt="hi", temperature=-1)
    assert error.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "name": "a:b", "content": "x"}])


def test_banned_strings_are_never_sent(client):
    greedy = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0}
    plain = client.post("/v1/completions", json=greedy).json()["choices"][0]["text"]
    words = plain.split()
    banned = [words[2], words[5] + " " + words[6]]  # a word, and a phrase spanning tokens
    assert all(b in plain for b in banned)
    body = {**greedy, "banned_strings": banned}
    guarded = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert not any(b in guarded for b in banned)
    first = min(plain.index(b) for b in banned)
    assert guarded[: first - 1] == plain[: first - 1]  # the text before the first banned string is kept
    events = stream(client, "/v1/completions", body)
    pieces = [e["choices"][0]["text"] for e in events if isinstance(e, dict) and e["choices"]]
    assert "".join(pieces) == guarded
