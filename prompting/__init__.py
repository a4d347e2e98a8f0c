"""The `::::` roleplay format, in pure Python (no torch): rendering, validation, parsing."""

from prompting.conversation import DEFAULT_OPENING, AuthorsNote, Character, Message, Setting
from prompting.labels import LABEL_MARK, NEXT_TURN, STOP_STRING, drop_label_space, ends_with_label_space, label
from prompting.lorebook import LORE_POSITIONS, Lorebook, LoreEntry, LorePosition
from prompting.parse import parse_turns
from prompting.render import RenderedPrompt, render_prompt
from prompting.validation import PromptError

__all__ = [
    "DEFAULT_OPENING",
    "LABEL_MARK",
    "LORE_POSITIONS",
    "NEXT_TURN",
    "STOP_STRING",
    "AuthorsNote",
    "Character",
    "LoreEntry",
    "LorePosition",
    "Lorebook",
    "Message",
    "PromptError",
    "RenderedPrompt",
    "Setting",
    "drop_label_space",
    "ends_with_label_space",
    "label",
    "parse_turns",
    "render_prompt",
]
