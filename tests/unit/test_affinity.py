"""Conversation keys for routing a chat to its replica, and the replica order they give."""

import json

from server.ray_serve.affinity import conversation_key, first_turns
from server.ray_serve.router import rendezvous_order


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_first_turns_is_the_story_and_the_first_turn():
    prompt = "Story.\n\n::::user:Anon: Hello.\n\n::::assistant:Greta: Hi.\n\n::::user:Anon: More?"
    assert first_turns(prompt) == "Story.\n\n::::user:Anon: Hello."
    assert first_turns("::::user:Anon: Hi.\n\n::::assistant:Greta:") == "::::user:Anon: Hi."
    assert first_turns("no labels at all") == "no labels at all"
    assert first_turns("x" * 5000) == "x" * 1024


def test_turns_and_swipes_of_one_chat_share_a_key_and_other_chats_do_not():
    turn_one = "Story.\n\n::::user:Anon: Hello.\n\n::::assistant:Greta:"
    turn_two = turn_one + " Hi.\n\n::::user:Anon: And then?\n\n::::assistant:Greta:"
    other = "Story.\n\n::::user:Anon: Goodbye.\n\n::::assistant:Greta:"
    keys = [conversation_key("/v1/completions", body(prompt=p)) for p in (turn_one, turn_two, turn_one, other)]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert len(keys[0]) == 16
    assert conversation_key("/completion", body(prompt=turn_one)) == keys[0]


def test_chat_requests_are_keyed_by_their_first_message():
    first = {"role": "user", "name": "Anon", "content": "Hello."}
    one = conversation_key("/v1/chat/completions", body(messages=[first]))
    two = conversation_key("/v1/chat/completions", body(messages=[first, {"role": "assistant", "content": "Hi."}]))
    assert one == two != conversation_key("/v1/chat/completions", body(messages=[{**first, "content": "Bye."}]))


def test_requests_without_a_conversation_have_no_key():
    assert conversation_key("/health", b"") is None
    assert conversation_key("/v1/completions", b"not json") is None
    assert conversation_key("/v1/completions", b"[1, 2]") is None
    assert conversation_key("/v1/completions", body(prompt="")) is None
    assert conversation_key("/v1/chat/completions", body(messages=[])) is None
    assert conversation_key("/completion", body(prompt=[1, 2, 3])) is not None


def test_rendezvous_order_is_stable_and_moves_only_the_lost_replicas_keys():
    replicas = ["a", "b", "c"]
    keys = [f"chat-{i}" for i in range(200)]
    first = {key: rendezvous_order(key, replicas)[0] for key in keys}
    assert first == {key: rendezvous_order(key, list(reversed(replicas)))[0] for key in keys}
    assert set(first.values()) == {"a", "b", "c"}
    without_c = {key: rendezvous_order(key, ["a", "b"])[0] for key in keys}
    assert all(without_c[key] == first[key] for key in keys if first[key] != "c")
