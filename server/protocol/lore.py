"""The chat request's `lorebook` and `authors_note` fields. A lorebook is a list of entries, or an object with the
entries and the book's options; entries take the field names of a Character Card V2 `character_book` and of
SillyTavern's World Info files too, so a card's book can be sent as it is."""

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from prompting import AuthorsNote, Lorebook, LoreEntry, LorePosition

# Character Card V2 writes `before_char` / `after_char`.
_POSITION_ALIASES = {"before_char": "before_characters", "after_char": "after_characters"}


def _position(value: object) -> object:
    return _POSITION_ALIASES.get(value, value) if isinstance(value, str) else value


def _keys(value: object) -> object:
    """A single key, or SillyTavern's comma-separated text, as a list."""
    if isinstance(value, str):
        return [key.strip() for key in value.split(",") if key.strip()]
    return value


Keys = Annotated[list[str], BeforeValidator(_keys)]


class LoreEntryIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    keys: Keys = Field(default_factory=list, validation_alias=AliasChoices("keys", "key"))
    content: str
    secondary_keys: Keys = Field(default_factory=list, validation_alias=AliasChoices("secondary_keys", "keysecondary"))
    constant: bool = False
    case_sensitive: bool = Field(False, validation_alias=AliasChoices("case_sensitive", "caseSensitive"))
    whole_words: bool = Field(False, validation_alias=AliasChoices("whole_words", "matchWholeWords"))
    position: Annotated[LorePosition, BeforeValidator(_position)] = "before_characters"
    depth: int = Field(4, ge=0, le=10_000)
    order: int = Field(100, validation_alias=AliasChoices("order", "insertion_order"))
    enabled: bool = True

    def entry(self) -> LoreEntry:
        return LoreEntry(
            content=self.content,
            keys=tuple(self.keys),
            secondary_keys=tuple(self.secondary_keys),
            constant=self.constant,
            case_sensitive=self.case_sensitive,
            whole_words=self.whole_words,
            position=self.position,
            depth=self.depth,
            order=self.order,
            enabled=self.enabled,
        )


class LorebookIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    entries: list[LoreEntryIn] = Field(default_factory=list, max_length=1000)
    scan_depth: int = Field(2, ge=0, le=10_000, description="The latest messages searched for keys.")
    token_budget: int | None = Field(None, ge=0, description="At most this many tokens of entries.")

    def book(self) -> Lorebook:
        return Lorebook(
            entries=tuple(entry.entry() for entry in self.entries),
            scan_depth=self.scan_depth,
            token_budget=self.token_budget,
        )


def _entries_as_book(value: object) -> object:
    return {"entries": value} if isinstance(value, list) else value


LorebookField = Annotated[LorebookIn, BeforeValidator(_entries_as_book)]


class AuthorsNoteIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str
    depth: int = Field(4, ge=0, le=10_000, description="Messages after the note (0: right before the reply).")
    style: Literal["ooc", "plain"] = Field("ooc", description="`ooc`: written as `(OOC: ...)`; `plain`: as is.")

    def note(self) -> AuthorsNote:
        return AuthorsNote(content=self.content, depth=self.depth, ooc=self.style == "ooc")
