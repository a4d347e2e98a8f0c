"""A roleplay conversation as structured data: messages with roles and character names, an optional setting."""

from dataclasses import dataclass, field

DEFAULT_OPENING = "Let's engage together in a roleplay."


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str
    name: str | None = None
    ooc: bool = False  # an out-of-character note: a nameless user turn "(OOC: ...)"


@dataclass(frozen=True)
class Character:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Setting:
    """The opening `::::user:` turn: an opening line, then Markdown headings for what is given."""

    title: str | None = None
    characters: tuple[Character, ...] = field(default_factory=tuple)
    scenario: str | None = None
    opening: str = DEFAULT_OPENING

    @property
    def empty(self) -> bool:
        return not (self.title or self.characters or self.scenario)


@dataclass(frozen=True)
class AuthorsNote:
    """A note to the writer, kept `depth` messages from the end of the transcript (0: right before the reply)."""

    content: str
    depth: int = 4
    ooc: bool = True  # written as an out-of-character note, the form the model was trained to follow
