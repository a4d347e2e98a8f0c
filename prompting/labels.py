"""Turn labels of the `::::` format (the model card's, restated in the README under "The prompt")."""

import re
from typing import Literal

Side = Literal["user", "assistant"]

LABEL_MARK = "::::"
# No EOS was trained after turns: the model ends its turn by starting the next label, so the label mark itself
# is the stop string.
STOP_STRING = LABEL_MARK
TURN_SEPARATOR = "\n\n"
# Where a turn ends: the next label starts, and its blank line belongs to the separator, not the turn.
NEXT_TURN = TURN_SEPARATOR + LABEL_MARK

# A prompt ending in a complete label and its one space, as SillyTavern's instruct template writes it.
_TRAILING_LABEL = re.compile(r"::::(?:user|assistant):(?:[^:\n]+:)? \Z")


def label(side: Side, name: str | None = None) -> str:
    """`::::user:Jack:` or `::::user:`, without the space that follows it in the text."""
    return f"{LABEL_MARK}{side}:{name}:" if name else f"{LABEL_MARK}{side}:"


def ends_with_label_space(prompt: str) -> bool:
    return _TRAILING_LABEL.search(prompt) is not None


def drop_label_space(text: str) -> str:
    """The reply as the model writes it after a label that ends at its colon: the first word carries the label's
    space (Llama-3 tokenises `": Hello"` as `":"` + `" Hello"`); the reply itself does not."""
    return text.removeprefix(" ")
