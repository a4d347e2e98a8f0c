"""What user text may not contain: anything that could forge a turn label or a special token."""

import re
from collections.abc import Collection, Sequence
from functools import lru_cache

from prompting.conversation import AuthorsNote, Message, Setting
from prompting.labels import LABEL_MARK
from prompting.lorebook import Lorebook, key_problem

ROLES = ("system", "user", "assistant")


class PromptError(ValueError):
    """A message or setting cannot be rendered safely; `param` says where (`messages[2].name`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def validate(
    messages: Sequence[Message],
    setting: Setting,
    speaker: str | None,
    special_tokens: Collection[str],
    lorebook: Lorebook | None = None,
    authors_note: AuthorsNote | None = None,
) -> None:
    if not messages and setting.empty:
        raise PromptError("messages", "the conversation is empty: send at least one message or a setting")
    special = _special_pattern(frozenset(special_tokens))
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role not in ROLES:
            raise PromptError(
                f"{where}.role", f"message {index}: unknown role {message.role!r} (use {', '.join(ROLES)})"
            )
        if message.name is not None:
            check_name(message.name, f"{where}.name", f"message {index}")
        if message.ooc and (message.role != "user" or message.name):
            raise PromptError(f"{where}.ooc", f"message {index}: an OOC note is a user message without a name")
        check_text(message.content, f"{where}.content", f"message {index}", special)
    for index, character in enumerate(setting.characters):
        where = f"characters[{index}]"
        check_name(character.name, f"{where}.name", f"character {index}")
        check_text(character.description, f"{where}.description", f"character {index}", special)
    for name in ("title", "scenario", "opening"):
        check_text(getattr(setting, name) or "", name, name, special)
    if speaker is not None:
        check_name(speaker, "speaker", "speaker")
    for index, entry in enumerate(lorebook.entries if lorebook else ()):
        where = f"lorebook.entries[{index}]"
        check_text(entry.content, f"{where}.content", f"lorebook entry {index}", special)
        for key in (*entry.keys, *entry.secondary_keys):
            problem = key_problem(key)
            if problem:
                raise PromptError(f"{where}.keys", f"lorebook entry {index}: {problem}")
    if authors_note:
        check_text(authors_note.content, "authors_note.content", "the author's note", special)


def check_name(name: str, param: str, what: str) -> None:
    problem = (
        "is empty"
        if not name
        else "contains ':' (it would end the label early)"
        if ":" in name
        else "contains a line break"
        if "\n" in name or "\r" in name
        else "starts or ends with a space"
        if name != name.strip()
        else None
    )
    if problem:
        raise PromptError(param, f"{what}: the name {name!r} {problem}")


def check_text(text: str, param: str, what: str, special: re.Pattern[str] | None) -> None:
    if LABEL_MARK in text:
        raise PromptError(param, f"{what}: the text contains '{LABEL_MARK}', which would forge a turn label")
    found = special.search(text) if special else None
    if found:
        raise PromptError(param, f"{what}: the text contains the special token {found.group()!r}")


@lru_cache(maxsize=8)
def _special_pattern(special_tokens: frozenset[str]) -> re.Pattern[str] | None:
    tokens = sorted((t for t in special_tokens if t), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None
