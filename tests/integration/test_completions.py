"""/v1/completions against a real server on the embedded model with a LoRA adapter."""

import httpx

from tests import tokenizers
from tests.integration.sse import stream, streamed_text

PROMPT = "The lighthouse keeper looked at the sea and said"


def complete(client: httpx.Client, **body) -> dict:
    response = client.post("/v1/completions", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def token_id(text: str) -> int:
    (token,) = tokenizers.smollm2().encode(text, add_special_tokens=False)
    return token


def test_health_answered_503_while_loading_then_200(server):
    assert server.health_statuses[0] == 503
    assert server.health_statuses[-1] == 200


def test_plain_completion_in_openai_shape(client):
    body = complete(client, max_tokens=8, seed=3)
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == client.get("/v1/models").json()["data"][0]["id"]
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8


def test_models_list(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert body["data"][0]["object"] == "model"
    assert body["data"][0]["max_model_len"] == 8192


def test_streamed_text_equals_the_whole_answer_for_the_same_seed(client):
    whole = complete(client, max_tokens=20, seed=11)["choices"][0]["text"]
    events = stream(client, "/v1/completions", {"prompt": PROMPT, "max_tokens": 20, "seed": 11})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "text_completion" and len(chunk["choices"]) == 1 for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-1] == "length"
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    assert streamed_text(events) == whole
    assert "usage" not in chunks[0]


def test_include_usage_adds_a_last_chunk_with_usage_and_no_choices(client):
    events = stream(
        client,
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 5, "stream_options": {"include_usage": True}},
    )
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert all(chunk["usage"] is None for chunk in chunks)


def test_same_seed_same_text_and_other_seeds_differ(client):
    texts = [complete(client, max_tokens=24, seed=seed)["choices"][0]["text"] for seed in (5, 5, 6, 7)]
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) > 1


def test_forced_label_mark_ends_the_stream_before_it(client):
    body = {"prompt": PROMPT, "max_tokens": 20, "logit_bias": {str(token_id("::::")): 100}}
    events = stream(client, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert streamed_text(events) == ""
    whole = complete(client, **body)
    assert whole["choices"][0] | {"index": 0} == {
        "index": 0,
        "text": "",
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_stop_string_spanning_tokens_is_cut_exactly(client):
    greedy = complete(client, max_tokens=30, temperature=0)["choices"][0]["text"]
    tokens = tokenizers.smollm2().encode(greedy, add_special_tokens=False)
    # A stop that starts inside one token and ends inside a later one.
    boundary = len(tokenizers.smollm2().decode(tokens[:3]))
    stop = greedy[boundary - 2 : boundary + 3]
    expected = greedy[: greedy.index(stop)]
    whole = complete(client, max_tokens=30, temperature=0, stop=[stop])["choices"][0]
    assert (whole["text"], whole["finish_reason"]) == (expected, "stop")
    events = stream(client, "/v1/completions", {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stop": stop})
    assert streamed_text(events) == expected


def test_max_tokens_gives_length(client):
    body = complete(client, max_tokens=3)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_bos_is_never_doubled(client):
    plain = complete(client, max_tokens=1)["usage"]["prompt_tokens"]
    with_bos_text = client.post("/v1/completions", json={"prompt": "<|im_start|>" + PROMPT, "max_tokens": 1})
    without = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 1, "add_bos_token": False})
    assert plain == len(tokenizers.smollm2().encode(PROMPT, add_special_tokens=False)) + 1
    assert with_bos_text.json()["usage"]["prompt_tokens"] == plain
    assert without.json()["usage"]["prompt_tokens"] == plain - 1


def test_echo_prepends_the_prompt(client):
    body = complete(client, max_tokens=4, seed=1, echo=True)
    assert body["choices"][0]["text"].startswith(PROMPT)
    events = stream(client, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "seed": 1, "echo": True})
    assert streamed_text(events) == body["choices"][0]["text"]


def test_unicode_streams_whole_characters(client):
    prompt = "日本の首都は東京です。日本の有名な食べ物は"
    body = {"prompt": prompt, "max_tokens": 40, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    events = stream(client, "/v1/completions", body)
    pieces = [event["choices"][0]["text"] for event in events[:-1]]
    assert "".join(pieces) == whole
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(ord(char) > 0x3000 for char in whole)


def test_unknown_fields_are_ignored(client):
    body = complete(client, max_tokens=2, api_type="ooba", dry_multiplier=0.8, sampler_priority=["min_p"])
    assert body["choices"][0]["finish_reason"] == "length"
