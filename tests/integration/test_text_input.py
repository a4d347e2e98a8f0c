"""Any JSON string is a valid input or a clear 400: a lone UTF-16 surrogate (legal JSON, not a character) in any
text field of any route is refused naming the field, before a tokenizer sees it; NUL and other unusual code
points are ordinary text."""

import json

import pytest

SURROGATE = "\ud800"
HELLO = [{"role": "user", "name": "Anon", "content": "Hello."}]


def _chat(**fields: object) -> dict:
    return {"messages": HELLO, "speaker": "Nanashi", "max_tokens": 1, **fields}


CASES = [
    ("/v1/completions", {"prompt": SURROGATE, "max_tokens": 1}, "prompt"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "stop": ["a", SURROGATE]}, "stop[1]"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "stopping_strings": [SURROGATE]}, "stopping_strings[0]"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "banned_strings": [SURROGATE]}, "banned_strings[0]"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "dry_sequence_breakers": SURROGATE}, "dry_sequence_breakers"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, SURROGATE: 1}, "\\ud800"),
    ("/completion", {"prompt": SURROGATE, "n_predict": 1}, "prompt"),
    ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": SURROGATE}]), "messages[0].content"),
    (
        "/v1/chat/completions",
        _chat(messages=[{"role": "user", "name": SURROGATE, "content": "Hi"}]),
        "messages[0].name",
    ),
    (
        "/v1/chat/completions",
        _chat(characters=[{"name": "Nanashi", "description": SURROGATE}]),
        "characters[0].description",
    ),
    ("/v1/chat/completions", _chat(speaker=SURROGATE), "speaker"),
    ("/v1/chat/render", _chat(title=SURROGATE), "title"),
    ("/v1/internal/encode", {"text": SURROGATE}, "text"),
    ("/v1/token/encode", {"text": SURROGATE}, "text"),
    ("/tokenize", {"prompt": SURROGATE}, "prompt"),
    ("/tokenize", {"content": SURROGATE}, "content"),
    ("/v1/tokenize", {"prompt": SURROGATE}, "prompt"),
    ("/api/extra/tokencount", {"prompt": SURROGATE}, "prompt"),
]


@pytest.mark.parametrize(("path", "body", "param"), CASES, ids=[f"{p} {param}" for p, _, param in CASES])
def test_a_lone_surrogate_is_a_400_naming_its_field(client, path, body, param):
    # json.dumps writes the surrogate as the escape "\ud800", which is how a client's JSON carries it.
    response = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert "surrogate" in error["message"]


@pytest.mark.parametrize("text", ["\x00", "a\x00b", "\uffff", "\U0010ffff", "\ufeff", "\u202e", "\x7f\x1b[0m"])
def test_unusual_code_points_are_ordinary_text(client, text):
    counted = client.post("/v1/internal/encode", json={"text": text})
    assert counted.status_code == 200 and counted.json()["length"] >= 2  # BOS and the text
    generated = client.post("/v1/completions", json={"prompt": f"Say {text}", "max_tokens": 2, "temperature": 0})
    assert generated.status_code == 200, generated.text
    rendered = client.post("/v1/chat/render", json={"messages": [{"role": "user", "name": "Anon", "content": text}]})
    assert rendered.status_code in (200, 400)  # a name or content rule may refuse it, never a 5xx
