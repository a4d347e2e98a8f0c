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
