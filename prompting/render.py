"""Conversation -> prompt text in the exact `::::` format.

Layout: turns are separated by one blank line (`\\n\\n`), so every label but the first is preceded by `\\n\\n`.
The first label starts the text, right after BOS: the card's own example starts with its opening `::::user:`
turn, and the blank line is a separator between turns, not part of a label. Exactly one space follows each
complete label; content is stripped of surrounding whitespace so that stays exact.

The prompt ends with the speaker's label *at its colon*, without the space: with the Llama-3 tokenizer a text
ending in `": "` ends in a lone space token that never preceded a word in training (`": Hello"` is `":"` +
`" Hello"`). Ending at the colon makes the prompt's tokens a prefix of the whole conversation's tokens once the
reply is appended with its space; the reply's first token carries that space, and `drop_label_space` removes it
from the text returned to the client.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from prompting.conversation import Message, Setting
from prompting.labels import TURN_SEPARATOR, Side, label
from prompting.validation import PromptError, validate


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # without BOS
    speaker: str | None  # the character the model writes as (None: a nameless assistant label)


def render_prompt(
    messages: Sequence[Message],
    setting: Setting | None = None,
    speaker: str | None = None,
    special_tokens: Collection[str] = (),
) -> RenderedPrompt:
    """Raises PromptError naming the message and the reason for anything that cannot be rendered safely."""
    setting = setting or Setting()
    validate(messages, setting, speaker, special_tokens)
    for index, message in enumerate(messages):
        if not message.content.strip():
            raise PromptError(f"messages[{index}].content", f"message {index}: the content is empty")
    if speaker is None:
        speaker = next((m.name for m in reversed(messages) if m.role == "assistant" and m.name), None)
    turns = [] if setting.empty else [opening_turn(setting)]
    turns.extend(turn_text(message) for message in messages)
    turns.append(label("assistant", speaker))
    return RenderedPrompt(text=TURN_SEPARATOR.join(turns), speaker=speaker)


def turn_text(message: Message) -> str:
    side: Side = "assistant" if message.role == "assistant" else "user"
    name = None if message.role == "system" else message.name
    content = message.content.strip()
    return f"{label(side, name)} {f'(OOC: {content})' if message.ooc else content}"


def opening_turn(setting: Setting) -> str:
    parts = [f"{label('user')} {setting.opening.strip()}"]
    if setting.title:
        parts.append(f"# Roleplay title\n{setting.title.strip()}")
    if setting.characters:
        parts.append("# Characters")
        parts.extend(
            f"## {c.name}\n{c.description.strip()}" if c.description.strip() else f"## {c.name}"
            for c in setting.characters
        )
    if setting.scenario:
        parts.append(f"# Scenario\n{setting.scenario.strip()}")
    return TURN_SEPARATOR.join(parts)
