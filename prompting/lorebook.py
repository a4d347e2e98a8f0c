"""A lorebook (SillyTavern's World Info, Kobold's World Info): entries whose text enters the prompt when one of
their keys appears in the latest messages, or always (constant entries), within a token budget.

Matching follows SillyTavern's: a key is plain text (case-insensitive unless the entry says otherwise, optionally
whole words only) or a regular expression written `/pattern/flags`; an entry with secondary keys also needs one
of those to appear. Only the `scan_depth` latest messages are scanned. Where the entries go in the `::::` format
is `render.py`'s business; this module only decides which ones go.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from prompting.conversation import Message

LorePosition = Literal["before_characters", "after_characters", "at_depth"]
LORE_POSITIONS: tuple[LorePosition, ...] = ("before_characters", "after_characters", "at_depth")

_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


@dataclass(frozen=True)
class LoreEntry:
    content: str
    keys: tuple[str, ...] = ()
    secondary_keys: tuple[str, ...] = ()  # when given, one of them must appear too
    constant: bool = False  # always in the prompt, keys or not
    case_sensitive: bool = False
    whole_words: bool = False
    position: LorePosition = "before_characters"
    depth: int = 4  # with `at_depth`: how many messages come after the entry
    order: int = 100  # higher goes later in its place, and is kept first when the budget runs out
    enabled: bool = True


@dataclass(frozen=True)
class Lorebook:
    entries: tuple[LoreEntry, ...] = field(default_factory=tuple)
    scan_depth: int = 2  # the latest messages whose text is searched for keys
    token_budget: int | None = None  # at most this many tokens of entries; None: no limit


def triggered(
    book: Lorebook, messages: Sequence[Message], count_tokens: Callable[[str], int] | None = None
) -> list[int]:
    """The indexes of the entries that enter the prompt, in the book's order. With a token budget (measured by
    `count_tokens`, then required), constant entries, then the others by descending `order`, are kept while the
    budget holds; the first that does not fit ends the selection (as in SillyTavern, so that a long low-priority
    entry never crowds out a shorter higher one)."""
    scanned = "\n".join(m.content for m in messages[len(messages) - book.scan_depth :]) if book.scan_depth else ""
    active = [
        index
        for index, entry in enumerate(book.entries)
        if entry.enabled and entry.content.strip() and (entry.constant or _keys_found(entry, scanned))
    ]
    if book.token_budget is None:
        return active
    if count_tokens is None:
        raise ValueError("a lorebook with a token budget needs count_tokens")
    active.sort(key=lambda index: (not book.entries[index].constant, -book.entries[index].order, index))
    kept: list[int] = []
    spent = 0
    for index in active:
        cost = count_tokens(book.entries[index].content.strip())
        if spent + cost > book.token_budget:
            break
        spent += cost
        kept.append(index)
    return sorted(kept)


def key_problem(key: str) -> str | None:
    """Why a key cannot be used (a regular expression that does not compile), or None."""
    found = _REGEX_KEY.match(key)
    if not found:
        return None
    unknown = set(found.group(2)) - set(_FLAGS) - {"g", "u"}
    if unknown:
        return f"the regular expression {key!r} has unknown flags {''.join(sorted(unknown))!r}"
    try:
        re.compile(found.group(1))
    except re.error as error:
        return f"the regular expression {key!r} does not compile: {error}"
    return None


def _keys_found(entry: LoreEntry, text: str) -> bool:
    def any_found(keys: tuple[str, ...]) -> bool:
        return any(_pattern(key, entry.case_sensitive, entry.whole_words).search(text) for key in keys if key)

    return any_found(entry.keys) and (not entry.secondary_keys or any_found(entry.secondary_keys))


@lru_cache(maxsize=1024)
def _pattern(key: str, case_sensitive: bool, whole_words: bool) -> re.Pattern[str]:
    found = _REGEX_KEY.match(key)
    if found:
        # JavaScript's `g` and `u` change nothing for a search; Python's patterns are Unicode already.
        flags = 0
        for letter in found.group(2):
            flags |= _FLAGS.get(letter, 0)
        return re.compile(found.group(1), flags)
    flags = 0 if case_sensitive else re.IGNORECASE
    escaped = re.escape(key.strip())
    return re.compile(rf"(?<!\w){escaped}(?!\w)" if whole_words else escaped, flags)
