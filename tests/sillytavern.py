"""SillyTavern's side, rebuilt for tests from its behaviour (1.18): how it renders a context template's story
string, assembles an instruct-mode Text Completion prompt, joins a group's character cards, and turns a sampler
preset into the request body each API type sends (the keys each type forwards are read from the captures in
tests/fixtures/sillytavern)."""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

PRESETS = Path(__file__).resolve().parents[1] / "prompting" / "presets"
CAPTURES = Path(__file__).resolve().parent / "fixtures" / "sillytavern"
_IF_BLOCK = re.compile(r"\{\{#if (\w+)\}\}((?:(?!\{\{#if).)*?)\{\{/if\}\}", re.S)


def preset(name: str) -> dict:
    return json.loads((PRESETS / f"{name}.json").read_text())


def macros(text: str, values: dict) -> str:
    """`{{trim}}` eats the newlines around it; `{{newline}}` is one; other macros are their values."""
    text = re.sub(r"(?:\r?\n)*\{\{trim\}\}(?:\r?\n)*", "", text)
    text = text.replace("{{newline}}", "\n")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(values.get(m.group(1), "")), text)


def render_story_string(template: str, values: dict) -> str:
    """Handlebars first: `{{#if}}` blocks (innermost first) and the values' own fields; then the macros left
    (`{{trim}}` among them, so it also eats a value's trailing newlines); leading newlines go, and in instruct mode
    without `wrap` no newline is added at the end."""
    while _IF_BLOCK.search(template):
        template = _IF_BLOCK.sub(lambda m: m.group(2) if values.get(m.group(1)) else "", template)
    template = re.sub(
        r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template
    )
    return re.sub(r"^\n+", "", macros(template, values))


@dataclass
class Message:
    name: str
    text: str
    is_user: bool = False
    is_system: bool = False


@dataclass
class Card:
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    mes_example: str = ""  # blocks each opened by `<START>`, lines `{{user}}: ...` / `{{char}}: ...`


@dataclass
class Chat:
    """What SillyTavern knows when it builds a prompt: the user, the character(s), lore that fired, the chat."""

    user: str
    persona: str
    cards: list[Card]
    messages: list[Message]
    world_info_before: list[str] = field(default_factory=list)
    world_info_after: list[str] = field(default_factory=list)
    anchor_before: str = ""
    anchor_after: str = ""
    scenario_override: str = ""
    system_prompt: str = ""  # SillyTavern's System Prompt when it is on (its default "Neutral - Chat" is)
    examples_behavior: str = "normal"  # User Settings, "Example Messages Behavior": "normal" or "strip" (never)


def lighthouse_group() -> Chat:
    """A group chat: two characters answering in turn, the scenario set on the group."""
    return Chat(
        user="Anon",
        persona="A traveller caught in the storm.",
        cards=[Card("Greta", "A retired lighthouse keeper."), Card("Tomas", "Her nephew, a fisherman.")],
        messages=[
            Message("Anon", "Anon knocked at the lighthouse door.", is_user=True),
            Message("Greta", '"Come in," Greta called.'),
            Message("Tomas", "Tomas opened the door and stepped aside."),
        ],
        scenario_override="A stormy night at the lighthouse.",
    )


# "Join character cards" with this prefix puts each member's description under its own heading.
GROUP_JOIN_PREFIX = "{{newline}}## {{char}}{{newline}}"


def example_blocks(examples: str, separator: str) -> list[str]:
    """SillyTavern's parsing of example dialogues in instruct mode: the text split at each `<START>` (one is
    assumed before the first block), each block trimmed, headed by the context template's separator (or
    `<START>` when it has none) and ended by a newline."""
    if not examples or examples == "<START>":
        return []
    if not examples.startswith("<START>"):
        examples = "<START>\n" + examples.strip()
    heading = f"{macros(separator, {})}\n" if separator else "<START>\n"
    return [f"{heading}{block.strip()}\n" for block in re.split("<START>", examples, flags=re.I)[1:]]


def story_values(chat: Chat, speaker: str, join_prefix: str = "", separator: str = "") -> dict:
    """The story string's parameters. One card: its fields, `{{user}}` and `{{char}}` filled. Several (a group in
    "Join character cards" mode): each field joined over the members, each part behind `join_prefix` (macros
    filled per member; SillyTavern trims the prefix before it fills them) and joined by newlines; example
    dialogues too, before they are split into blocks (so a member's heading ends the block before it)."""
    if len(chat.cards) == 1:
        card = chat.cards[0]
        description, personality, scenario = card.description, card.personality, card.scenario
        examples = macros(card.mes_example.strip(), {"char": card.name, "user": chat.user})
    else:

        def joined(values: list[tuple[str, str]]) -> str:
            prefix = join_prefix.strip()
            return "\n".join(macros(prefix + v.strip(), {"char": n, "user": chat.user}) for n, v in values if v.strip())

        description = joined([(c.name, c.description) for c in chat.cards])
        personality = joined([(c.name, c.personality) for c in chat.cards])
        scenario = chat.scenario_override or joined([(c.name, c.scenario) for c in chat.cards])
        examples = joined([(c.name, c.mes_example) for c in chat.cards])
    blocks = example_blocks(examples, separator)
    return {
        "char": speaker,
        "user": chat.user,
        "description": description,
        "personality": personality,
        "scenario": scenario,
        "persona": chat.persona,
        "system": chat.system_prompt,
        "mesExamplesRaw": "".join(blocks),
        "wiBefore": "\n".join(chat.world_info_before),
        "wiAfter": "\n".join(chat.world_info_after),
        "loreBefore": "\n".join(chat.world_info_before),
        "loreAfter": "\n".join(chat.world_info_after),
        "anchorBefore": chat.anchor_before,
        "anchorAfter": chat.anchor_after,
    }


def story_string_warnings(template: str, values: dict) -> list[str]:
    """The fields SillyTavern's "Story String Validation" toast names: ones with content the story string never
    shows (and so drops)."""
    checked = {"description": None, "personality": None, "persona": None, "scenario": None}
    checked |= {"wiBefore": "loreBefore", "wiAfter": "loreAfter"}
    return [
        field
        for field, legacy in checked.items()
        if values.get(field) and f"{{{{{field}}}}}" not in template and not (legacy and f"{{{{{legacy}}}}}" in template)
    ]


def instruct_prompt(context: dict, instruct: dict, chat: Chat, speaker: str, join_prefix: str = "") -> str:
    """Instruct-mode assembly: the story string within its prefix and suffix; the example dialogues unless the
    user chose to never include them (with the instruct template's `skip_examples`, as the raw blocks: the
    other way, labelling each line with the current speakers, is not modelled); then each message in its
    sequence with `{{name}}` filled (names_behavior "none": no `Name:` in the text), then the output sequence of
    the character who speaks next."""
    values = story_values(chat, speaker, join_prefix, context["example_separator"])
    story = render_story_string(context["story_string"], values)
    text = instruct.get("story_string_prefix", "") + story + instruct.get("story_string_suffix", "")
    if chat.examples_behavior != "strip" and values["mesExamplesRaw"]:
        if not instruct["skip_examples"]:
            raise ValueError("only templates with skip_examples are modelled")
        text += values["mesExamplesRaw"]
    for message in chat.messages:
        if message.is_system:
            sequence, suffix = instruct["system_sequence"], instruct["system_suffix"]
        elif message.is_user:
            sequence, suffix = instruct["input_sequence"], instruct["input_suffix"]
        else:
            sequence, suffix = instruct["output_sequence"], instruct["output_suffix"]
        text += macros(sequence, {"name": message.name}) + message.text + suffix
    last = instruct["last_output_sequence"] or instruct["output_sequence"]
    return text + macros(last, {"name": speaker})


# Where each key a type sends takes its value from in a Text Completion preset.
_PRESET_SOURCE = {
    "temperature": "temp",
    "typical": "typical_p",
    "repetition_penalty": "rep_pen",
    "repeat_penalty": "rep_pen",
    "repetition_penalty_range": "rep_pen_range",
    "repeat_last_n": "rep_pen_range",
    "frequency_penalty": "freq_pen",
    "presence_penalty": "presence_pen",
    "encoder_repetition_penalty": "encoder_rep_pen",
    "min_tokens": "min_length",
    "top_n_sigma": "nsigma",
    "mirostat": "mirostat_mode",
    "ignore_eos": "ignore_eos_token",
    "custom_token_bans": "banned_tokens",
    "dynamic_temperature": "dynatemp",
    "dynatemp_low": "min_temp",
    "dynatemp_high": "max_temp",
}


def generation_body(api_type: str, sampler_preset: dict, prompt: str) -> tuple[str, dict]:
    """The route and body SillyTavern sends for `api_type` with `sampler_preset` loaded: the captured request's
    keys, each holding the preset's value where the preset has one."""
    capture = json.loads((CAPTURES / f"{api_type}.json").read_text())
    sent = next(r for r in capture["requests_sent_to_backend"] if r["path"] in ("/v1/completions", "/completion"))
    body = dict(sent["body"])
    for key, captured in sent["body"].items():
        source = _PRESET_SOURCE.get(key, key)
        if source not in sampler_preset:
            continue
        value = sampler_preset[source]
        if key == "dry_sequence_breakers" and isinstance(captured, list):
            value = json.loads(value)  # llama.cpp and KoboldCpp get a real list
        body[key] = value
    if sampler_preset.get("dynatemp"):
        body["temperature"] = (sampler_preset["min_temp"] + sampler_preset["max_temp"]) / 2
    body["prompt"] = prompt
    body.pop("stream", None)  # SillyTavern sends `stream: true` or nothing
    return sent["path"], body
