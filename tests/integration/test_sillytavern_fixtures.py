"""Every request SillyTavern sent (tests/fixtures/sillytavern, recorded from SillyTavern 1.18), replayed against
the real server unchanged, checked at the paths SillyTavern reads (the README's SillyTavern section)."""

import json
from pathlib import Path

import httpx
import pytest

from tests import tokenizers
from tests.format_check import format_problems
from tests.integration.sse import data_events
from tests.sillytavern import GROUP_JOIN_PREFIX, generation_body, instruct_prompt, lighthouse_group, preset

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "sillytavern").glob("*.json"))
ERROR_KEYS = {"error", "message", "detail"}
# Every client's name for the tokens to generate: the replays after the first generate this few, as the first
# already ran SillyTavern's own 350 unchanged.
LENGTH_FIELDS = ("max_tokens", "max_new_tokens", "n_predict", "num_predict")
CAPPED_TOKENS = 8


def sillytavern_count(body: dict) -> int:
    """`length ?? count ?? value ?? tokens.length`"""
    for key in ("length", "count", "value"):
        if body.get(key) is not None:
            return body[key]
    return len(body["tokens"])


def sillytavern_ids(body: dict) -> list[int]:
    return body["tokens"] if body.get("tokens") is not None else body["ids"]


def sillytavern_text(event: dict) -> str:
    """A streamed text delta: `choices[0].text`, else `content` (llama.cpp)."""
    if event.get("choices"):
        return event["choices"][0].get("text") or ""
    return event.get("content") or ""


def expected_ids(path: str, body: dict) -> list[int]:
    text = body.get("text") or body.get("prompt") or body.get("content") or ""
    ids = tokenizers.smollm2().encode(text, add_special_tokens=False)
    with_bos = {
        "/v1/internal/encode": True,
        "/v1/token/encode": body.get("add_bos_token", True),
        "/api/extra/tokencount": False,
        "/v1/tokenize": True,
        "/tokenize": "prompt" in body,
    }[path]
    return [1, *ids] if with_bos else ids


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda path: path.stem)
def test_replay(server, fixture):
    recording = json.loads(fixture.read_text())
    # The first replay's generations run to SillyTavern's own max_tokens (350): give them time on a busy machine.
    with httpx.Client(base_url=server.url, timeout=900) as client:
        replay(client, recording, capped=fixture != FIXTURES[0])


def replay(client: httpx.Client, recording: dict, *, capped: bool) -> None:
    for sent in recording["requests_sent_to_backend"]:
        path, body = sent["path"], sent.get("body")
        if capped and isinstance(body, dict):
            body = {key: CAPPED_TOKENS if key in LENGTH_FIELDS else value for key, value in body.items()}
        if sent["method"] == "GET":
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            data = answer.json()
            model_id = data["data"][0]["id"] if "data" in data else data.get("id") or data.get("model_name")
            assert model_id
        elif path in ("/v1/completions", "/completion"):
            check_generation(client, path, body)
        else:
            answer = client.post(path, json=body)
            assert answer.status_code == 200, (path, answer.text)
            assert sillytavern_ids(answer.json()) == expected_ids(path, body)
            assert sillytavern_count(answer.json()) == len(expected_ids(path, body))


def check_generation(client, path: str, body: dict) -> None:
    if not body.get("stream"):
        answer = client.post(path, json=body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        text = data["choices"][0]["text"] if "choices" in data else data["content"]
        assert isinstance(text, str)
        assert "Hint" not in answer.headers.get("x-ignored-fields", "")
        return
    with client.stream("POST", path, json=body) as answer:
        assert answer.status_code == 200
        events = list(data_events(answer.iter_lines()))
    chunks = [event for event in events if isinstance(event, dict)]
    assert chunks and not any(ERROR_KEYS & set(chunk) for chunk in chunks)
    if path == "/v1/completions":
        assert events[-1] == "[DONE]"
        assert all(len(chunk["choices"]) == 1 for chunk in chunks)
        indices = {chunk["choices"][0]["index"] for chunk in chunks}
        assert indices == set(range(body.get("n") or 1))
    else:
        assert chunks[-1]["stop"] is True
    assert isinstance("".join(sillytavern_text(chunk) for chunk in chunks), str)


def test_a_group_chat_built_from_the_presets(server):
    """Two characters answering in turn, with SillyTavern's "Join character cards" mode and the shipped presets:
    the prompt is in the format, the token count SillyTavern shows is the server's (less the trimmed label space),
    and the card's samplers arrive unignored."""
    context, instruct = preset("Herrsimian-group-context"), preset("Herrsimian-instruct")
    prompt = instruct_prompt(context, instruct, lighthouse_group(), "Greta", join_prefix=GROUP_JOIN_PREFIX)
    assert prompt.endswith("\n\n::::assistant:Greta: ") and format_problems(prompt) == []
    path, body = generation_body("ooba-nostream", preset("Herrsimian-sampling"), prompt)
    body |= {"max_tokens": 8, "max_new_tokens": 8, "temperature": 0}
    with httpx.Client(base_url=server.url, timeout=None) as client:
        counted = client.post("/v1/internal/encode", json={"text": prompt.removesuffix(" ")}).json()["length"]
        answer = client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == counted
    assert not answer.json()["choices"][0]["text"].startswith(" ")
    ignored = answer.headers.get("x-ignored-fields", "")
    assert not {"min_p", "dry_multiplier", "dry_sequence_breakers"} & set(ignored.split(", "))
