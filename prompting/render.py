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

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from prompting.conversation import AuthorsNote, Message, Setting
from prompting.labels import TURN_SEPARATOR, Side, label
from prompting.lorebook import LORE_POSITIONS, Lorebook, LoreEntry, LorePosition, triggered
from prompting.validation import PromptError, validate


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # without BOS
    speaker: str | None  # the character the model writes as (None: a nameless assistant label)
    lore_entries: tuple[int, ...] = ()  # the lorebook entries in the prompt, by index


def render_prompt(
    messages: Sequence[Message],
    setting: Setting | None = None,
    speaker: str | None = None,
    special_tokens: Collection[str] = (),
    *,
    lorebook: Lorebook | None = None,
    authors_note: AuthorsNote | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> RenderedPrompt:
    """Raises PromptError naming the message and the reason for anything that cannot be rendered safely.
    `count_tokens` measures lorebook entries against the book's token budget (required when it has one)."""
    setting = setting or Setting()
    lorebook = lorebook or Lorebook()
    validate(messages, setting, speaker, special_tokens, lorebook, authors_note)
    for index, message in enumerate(messages):
        if not message.content.strip():
            raise PromptError(f"messages[{index}].content", f"message {index}: the content is empty")
    if speaker is None:
        speaker = next((m.name for m in reversed(messages) if m.role == "assistant" and m.name), None)
    chosen = triggered(lorebook, messages, count_tokens) if lorebook.entries else []
    lore = _placed([lorebook.entries[index] for index in chosen])
    before, after = lore["before_characters"], lore["after_characters"]
    turns = [] if setting.empty and not (before or after) else [opening_turn(setting, before, after)]
    turns.extend(transcript_turns(messages, lore["at_depth"], authors_note))
    turns.append(label("assistant", speaker))
    return RenderedPrompt(text=TURN_SEPARATOR.join(turns), speaker=speaker, lore_entries=tuple(chosen))


def transcript_turns(
    messages: Sequence[Message], lore: Sequence[LoreEntry], authors_note: AuthorsNote | None
) -> list[str]:
    """The messages' turns, with lore entries and the author's note each `depth` messages from the end (a depth
    beyond the transcript puts them first). At one depth: one nameless turn of lore, then the note, closest to
    the reply."""
    count = len(messages)
    inserted: defaultdict[int, list[str]] = defaultdict(list)
    lore_at: defaultdict[int, list[str]] = defaultdict(list)
    for entry in lore:
        lore_at[min(entry.depth, count)].append(entry.content.strip())
    for depth, contents in lore_at.items():
        inserted[depth].append(f"{label('user')} {TURN_SEPARATOR.join(contents)}")
    if authors_note and authors_note.content.strip():
        note = authors_note.content.strip()
        inserted[min(authors_note.depth, count)].append(
            turn_text(Message(role="user", content=note, ooc=authors_note.ooc))
        )
    turns: list[str] = []
    for index, message in enumerate(messages):
        turns.extend(inserted[count - index])
        turns.append(turn_text(message))
    turns.extend(inserted[0])
    return turns


def turn_text(message: Message) -> str:
    side: Side = "assistant" if message.role == "assistant" else "user"
    name = None if message.role == "system" else message.name
    content = message.content.strip()
    return f"{label(side, name)} {f'(OOC: {content})' if message.ooc else content}"


def opening_turn(setting: Setting, lore_before: Sequence[LoreEntry] = (), lore_after: Sequence[LoreEntry] = ()) -> str:
    """The opening line, then the title, lore placed before the characters, the characters, the scenario, and
    lore placed after the characters, each under its Markdown heading."""
    parts = [f"{label('user')} {setting.opening.strip()}"]
    if setting.title:
        parts.append(f"# Roleplay title\n{setting.title.strip()}")
    parts.extend(_lore_section(lore_before))
    if setting.characters:
        parts.append("# Characters")
        parts.extend(
            f"## {c.name}\n{c.description.strip()}" if c.description.strip() else f"## {c.name}"
            for c in setting.characters
        )
    if setting.scenario:
        parts.append(f"# Scenario\n{setting.scenario.strip()}")
    parts.extend(_lore_section(lore_after))
    return TURN_SEPARATOR.join(parts)


def _lore_section(entries: Sequence[LoreEntry]) -> list[str]:
    return [f"# Lore\n{TURN_SEPARATOR.join(entry.content.strip() for entry in entries)}"] if entries else []


def _placed(entries: Sequence[LoreEntry]) -> dict[LorePosition, list[LoreEntry]]:
    """The entries of each place, lower `order` first (SillyTavern's: the highest order is nearest the end)."""
    ordered = sorted(entries, key=lambda entry: entry.order)
    return {position: [entry for entry in ordered if entry.position == position] for position in LORE_POSITIONS}
