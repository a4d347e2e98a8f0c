"""Everything a client can send wrong gets an OpenAI-shaped error with the right status, never a 500."""

import pytest


def assert_openai_error(response, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_malformed_json(client):
    response = client.post(
        "/v1/completions", content=b'{"prompt": "hi", ', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in assert_openai_error(response, 400)["message"]


def test_body_that_is_not_an_object(client):
    assert_openai_error(client.post("/v1/completions", json=["hi"]), 400)


def test_missing_prompt(client):
    assert_openai_error(client.post("/v1/completions", json={"max_tokens": 3}), 400, param="prompt")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1),
        ("top_p", 0),
        ("top_p", 2),
        ("top_k", -5),
        ("min_p", 1.5),
        ("max_tokens", 0),
        ("max_tokens", "many"),
        ("n", 0),
        ("stream", "yes please"),
        ("stop", 5),
    ],
)
def test_invalid_values_name_their_field(client, field, value):
    response = client.post("/v1/completions", json={"prompt": "hi", field: value})
    assert_openai_error(response, 400, param=field)


@pytest.mark.parametrize(
    ("bias", "fragment"),
    [({"abc": 1}, "not a token id"), ({"1": 500}, "outside"), ({"99999999": 1}, "not in the vocabulary")],
)
def test_bad_logit_bias(client, bias, fragment):
    response = client.post("/v1/completions", json={"prompt": "hi", "logit_bias": bias})
    assert fragment in assert_openai_error(response, 400, param="logit_bias")["message"]


def test_more_samples_than_the_server_runs_at_once(client):
    assert_openai_error(client.post("/v1/completions", json={"prompt": "hi", "n": 100}), 400, param="n")


def test_prompt_longer_than_the_context(client):
    response = client.post("/v1/completions", json={"prompt": "word " * 9000, "stream": True})
    assert_openai_error(response, 400, param="prompt", code="context_length_exceeded")


def test_prompt_plus_max_tokens_longer_than_the_context(client):
    response = client.post("/v1/completions", json={"prompt": "word " * 8000, "max_tokens": 500})
    assert_openai_error(response, 400, param="max_tokens", code="context_length_exceeded")


def test_unknown_route_and_wrong_method(client):
    assert_openai_error(client.get("/v1/nothing-here"), 404)
    assert_openai_error(client.get("/v1/completions"), 405)
