"""Which conversation a request belongs to, from its body alone: the key that keeps a chat on the replica whose
prefix cache already holds it.

A chat's prompt grows turn by turn and keeps its beginning, so the key is a hash of that beginning: the prompt up
to its second `::::` turn label (the story string and the first turn; at most its first 1,024 characters), or the
chat's first message. Two chats that share that beginning (the same character card) get the same key, which
suits the prefix cache too. When old turns are trimmed to fit the context, the key changes, as the cached
prefix would stop matching anyway.
"""

import hashlib
import json

PREFIX_CHARACTERS = 1024
_TURN_LABEL = "\n\n::::"
_ROUTES_WITH_A_PROMPT = frozenset({"/v1/completions", "/completion"})
_ROUTES_WITH_MESSAGES = frozenset({"/v1/chat/completions"})


def conversation_key(path: str, body: bytes) -> str | None:
    """A short stable key for the conversation of a generation request; None when there is none (other routes,
    bodies that are not JSON objects): such requests go to the least-loaded replica."""
    if path not in _ROUTES_WITH_A_PROMPT | _ROUTES_WITH_MESSAGES:
        return None
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(request, dict):
        return None
    if path in _ROUTES_WITH_A_PROMPT:
        prompt = request.get("prompt")
        if isinstance(prompt, list):  # token ids (llama.cpp)
            prompt = json.dumps(prompt[: PREFIX_CHARACTERS // 4])
        if not isinstance(prompt, str) or not prompt:
            return None
        beginning = first_turns(prompt)
    else:
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        beginning = json.dumps(messages[0], sort_keys=True, ensure_ascii=False)[:PREFIX_CHARACTERS]
    return hashlib.blake2b(beginning.encode("utf-8", errors="replace"), digest_size=8).hexdigest()


def first_turns(prompt: str) -> str:
    """The prompt up to its second turn label (whatever comes before the first one, and the first turn), or its
    first `PREFIX_CHARACTERS` characters when that is shorter."""
    beginning = prompt[:PREFIX_CHARACTERS]
    first = beginning.find("::::")
    second = beginning.find(_TURN_LABEL, first + 1) if first >= 0 else -1
    return beginning[:second] if second > 0 else beginning
