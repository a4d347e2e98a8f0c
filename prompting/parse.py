"""Generated text back into messages: the speaker's reply, and any turns the model went on to write."""

import re

from prompting.conversation import Message
from prompting.labels import drop_label_space

# A label inside generated text; a name never starts with a space, so `::::user: (OOC: x)` has none.
_LABEL = re.compile(r"\s*::::(user|assistant):(?:([^:\s][^:\n]*):)? ?")


def parse_turns(text: str, speaker: str | None) -> list[Message]:
    """`text` continues a prompt that ended at the speaker's label colon. The blank line before each label and
    the space after it belong to the format, not to the turns."""
    pieces = _LABEL.split(text)
    messages = [Message(role="assistant", name=speaker, content=drop_label_space(pieces[0]))]
    for side, name, content in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        messages.append(Message(role=side, name=name, content=content))
    return messages
