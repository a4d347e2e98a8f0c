"""`--max-model-len` and `--cache-reuse`: a SillyTavern-shaped session driven past a small context, the oldest
messages dropped every turn, prefills a small part of what it prefills without cache reuse (counted by the server,
not timed), and generates valid text; per request, `n_cache_reuse: 0` turns it off."""

import statistics

import httpx
import pytest

from tests import tokenizers
from tests.integration.long_chat import trimmed_prompt
from tests.integration.server_process import ServerProcess

CONTEXT = 512
REPLY = 4
TURNS = 30


@pytest.fixture(scope="module")
def small_context_server():
    server = ServerProcess("--max-model-len", str(CONTEXT), "--cache-reuse", "32").wait_ready()
    yield server
    server.stop()


def session(server: ServerProcess, chat: str, turns: range, **extra: object) -> tuple[list[int], int, list[str]]:
    """The given turns of the chat named `chat`: (prompt tokens prefilled by each, prompt tokens shifted in all,
    replies)."""
    tokenizer = tokenizers.smollm2()

    def fits(prompt: str) -> bool:
        return 1 + len(tokenizer.encode(prompt, add_special_tokens=False)) + REPLY <= CONTEXT  # BOS, prompt, reply

    shifted_before = server.health()["shifted_tokens"]
    prefilled, replies = [], []
    with httpx.Client(base_url=server.url, timeout=300) as http:
        for turn in turns:
            before = server.health()["prefilled_tokens"]
            body = {"prompt": trimmed_prompt(turn, fits, chat), "max_tokens": REPLY, "temperature": 0, **extra}
            answer = http.post("/v1/completions", json=body)
            assert answer.status_code == 200, answer.text
            replies.append(answer.json()["choices"][0]["text"])
            prefilled.append(server.settled_health()["prefilled_tokens"] - before)
    return prefilled, server.health()["shifted_tokens"] - shifted_before, replies


def test_the_context_is_the_servers(small_context_server):
    models = httpx.get(f"{small_context_server.url}/v1/models").json()
    assert models["data"][0]["max_model_len"] == CONTEXT
    too_long = httpx.post(
        f"{small_context_server.url}/v1/completions", json={"prompt": "word " * CONTEXT, "max_tokens": 1}
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


def test_a_chat_past_the_context_prefills_a_fraction_with_cache_reuse(small_context_server):
    """30 turns with cache reuse; the last 10 of them again, in another chat, without (n_cache_reuse: 0)."""
    turns = range(8, 8 + TURNS)
    reused, shifted, replies = session(small_context_server, "(Chat one.)", turns)
    exact, exact_shifted, _ = session(small_context_server, "(Chat two.)", turns[-10:], n_cache_reuse=0)
    assert exact_shifted == 0 and shifted > 0
    # Past the context, a turn without cache reuse re-reads all but the story string; with it, the new message.
    assert statistics.fmean(reused[-10:]) < statistics.fmean(exact[1:]) / 4, (reused, exact)
    assert all(isinstance(reply, str) for reply in replies) and any(reply.strip() for reply in replies)
    assert '"shifted_tokens": ' in small_context_server.output()  # the request log says how many were moved
