"""The `::::` roleplay format, in pure Python (no torch): rendering, validation, parsing."""

from prompting.conversation import DEFAULT_OPENING, Character, Message, Setting
from prompting.format_check import format_problems
from prompting.labels import LABEL_MARK, NEXT_TURN, STOP_STRING, drop_reply_space, ends_with_label_space, label
from prompting.parse import parse_turns
from prompting.render import RenderedPrompt, conversation_text, render_prompt
from prompting.validation import PromptError

__all__ = [
    "DEFAULT_OPENING",
    "LABEL_MARK",
    "NEXT_TURN",
    "STOP_STRING",
    "Character",
    "Message",
    "PromptError",
    "RenderedPrompt",
    "Setting",
    "conversation_text",
    "drop_reply_space",
    "ends_with_label_space",
    "format_problems",
    "label",
    "parse_turns",
    "render_prompt",
]
