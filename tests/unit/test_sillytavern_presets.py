"""The three SillyTavern presets shipped in prompting/presets: imported unchanged by SillyTavern 1.18, they make
it send the card's sampling and build prompts in the card's format, lorebook and group chats included."""

import dataclasses
import json
from pathlib import Path

import pytest

from prompting import Character, Setting, render_prompt
from prompting import Message as Message_
from sampling import SamplingParams
from server.protocol.completions import CompletionRequest
from server.protocol.llamacpp import LlamaCppCompletionRequest
from server.sampling_preset import load_preset
from tests.format_check import format_problems
from tests.sillytavern import (
    GROUP_JOIN_PREFIX,
    Card,
    Chat,
    Message,
    generation_body,
    instruct_prompt,
    lighthouse_group,
    preset,
    story_string_warnings,
    story_values,
)

CARD = SamplingParams()  # the server's defaults are the model card's
CARD_STEPS = ["penalties", "dry", "top_k", "top_p", "min_p", "temperature"]
ALWAYS = ["::::"]

# What SillyTavern 1.18's Text Completion preset import reads (its preset import code).
SAMPLER_PRESET_FIELDS = {
    "temp", "temperature_last", "top_p", "top_k", "top_a", "tfs", "epsilon_cutoff", "eta_cutoff", "typical_p",
    "min_p", "rep_pen", "rep_pen_range", "rep_pen_decay", "rep_pen_slope", "freq_pen", "presence_pen",
    "no_repeat_ngram_size", "encoder_rep_pen", "skew", "dynatemp", "min_temp", "max_temp", "dynatemp_exponent",
    "smoothing_factor", "smoothing_curve", "dry_multiplier", "dry_base", "dry_allowed_length",
    "dry_sequence_breakers", "dry_penalty_last_n", "xtc_threshold", "xtc_probability", "nsigma", "mirostat_mode",
    "mirostat_tau", "mirostat_eta", "min_keep", "add_bos_token", "ban_eos_token", "ignore_eos_token",
    "skip_special_tokens", "banned_tokens", "logit_bias", "min_length", "sampler_priority", "samplers",
    "sampler_order",
}  # fmt: skip
CONTEXT_FIELDS = {
    "name", "story_string", "example_separator", "chat_start", "use_stop_strings", "names_as_stop_strings",
    "story_string_position", "story_string_depth", "story_string_role", "always_force_name2", "trim_sentences",
    "single_line",
}  # fmt: skip
INSTRUCT_FIELDS = {
    "name", "input_sequence", "output_sequence", "system_sequence", "first_input_sequence", "last_input_sequence",
    "first_output_sequence", "last_output_sequence", "last_system_sequence", "input_suffix", "output_suffix",
    "system_suffix", "stop_sequence", "wrap", "macro", "names_behavior", "sequences_as_stop_strings",
    "skip_examples", "activation_regex", "user_alignment_message", "system_same_as_user", "story_string_prefix",
    "story_string_suffix",
}  # fmt: skip
FORWARDING_TYPES = ["ooba-nostream", "ooba-stream", "tabby-stream-n2", "koboldcpp-nostream", "llamacpp-stream"]


def request_params(path: str, body: dict, preset_file: str | None = None) -> SamplingParams:
    """The request's parameters, its order reduced to where it matters: the card's steps (penalties, DRY, top-k,
    top-p, min-p, temperature) must come in the card's order; where the neutral steps sit changes nothing."""
    model = LlamaCppCompletionRequest if path == "/completion" else CompletionRequest
    fields = model.model_validate(body)
    server_preset = load_preset(Path(preset_file) if preset_file else None, ALWAYS)
    params = server_preset.params_for(fields, ALWAYS)
    card_steps = [step for step in params.order if step in CARD_STEPS]
    order = CARD.order if card_steps == CARD_STEPS else params.order
    return dataclasses.replace(params, seed=None, order=order)


def test_the_sampler_preset_carries_every_field_sillytavern_reads():
    sampling = preset("Herrsimian-sampling")
    assert set(sampling) >= SAMPLER_PRESET_FIELDS
    assert (sampling["temp"], sampling["min_p"], sampling["rep_pen"], sampling["freq_pen"]) == (1.0, 0.05, 1, 0)
    breakers = json.loads(sampling["dry_sequence_breakers"])  # a JSON-encoded string, as SillyTavern keeps it
    assert (sampling["dry_multiplier"], sampling["dry_base"], sampling["dry_allowed_length"]) == (0.8, 1.75, 2)
    assert breakers == ["\n", ":", '"', "*", "::::"]
    assert sampling["add_bos_token"] is True


@pytest.mark.parametrize("api_type", FORWARDING_TYPES)
def test_what_sillytavern_sends_with_the_preset_is_the_card(api_type):
    path, body = generation_body(api_type, preset("Herrsimian-sampling"), "::::user: Hi.")
    assert request_params(path, body) == CARD


@pytest.mark.parametrize("api_type", ["ooba-nostream", "koboldcpp-nostream", "llamacpp-stream"])
def test_sillytavern_defaults_are_not_the_card(api_type):
    """Why the preset exists: without it, SillyTavern's own values replace the card's."""
    path, body = generation_body(api_type, {}, "::::user: Hi.")
    params = request_params(path, body)
    assert params.repetition_penalty == 1.1 and params.dry_multiplier == 0


@pytest.mark.parametrize("api_type", ["generic-nostream", "vllm-stream", "ooba-nostream", "koboldcpp-nostream"])
def test_the_forcing_server_preset_gives_the_card_to_any_client(api_type):
    """Types that drop min-p or DRY (Generic, vLLM), or a SillyTavern left at its defaults."""
    path, body = generation_body(api_type, {}, "::::user: Hi.")
    assert request_params(path, body, "herrsimian-card") == CARD


def test_forced_fields_are_named():
    server_preset = load_preset(Path("herrsimian-card"), ALWAYS)
    _, body = generation_body("ooba-nostream", {}, "::::user: Hi.")
    overridden = server_preset.overridden(CompletionRequest.model_validate(body))
    assert overridden == [
        "dry_allowed_length", "dry_base", "dry_multiplier", "dry_penalty_last_n", "dry_sequence_breakers",
        "frequency_penalty", "min_p", "presence_penalty", "repetition_penalty", "temperature", "top_k", "top_p",
    ]  # fmt: skip
    assert server_preset.overridden(CompletionRequest.model_validate({"prompt": "x", "seed": 3})) == []


def test_the_templates_carry_every_field_sillytavern_fills():
    for name in ("Herrsimian-context", "Herrsimian-group-context"):
        context = preset(name)
        assert set(context) == CONTEXT_FIELDS, name
        assert context["story_string_position"] == 0 and context["names_as_stop_strings"] is False
        for field in ("{{wiBefore}}", "{{wiAfter}}", "{{anchorBefore}}", "{{anchorAfter}}", "{{persona}}"):
            assert field in context["story_string"], (name, field)
    instruct = preset("Herrsimian-instruct")
    assert set(instruct) == INSTRUCT_FIELDS
    assert (instruct["stop_sequence"], instruct["names_behavior"], instruct["wrap"]) == ("::::", "none", False)


REALISTIC = Chat(
    user="Anon",
    persona="Our main protagonist. A completely normal person.",
    cards=[
        Card(
            "Nanashi",
            description="Anon's long-time friend. Can be somewhat terse.",
            personality="Dry humour, loyal.",
            scenario="After meeting together, Anon and Nanashi have a little chat.",
        )
    ],
    messages=[
        Message("Nanashi", '"Oh. You came," Nanashi said.'),
        Message("Anon", '"Hello," said Anon, "How are you?"', is_user=True),
    ],
    world_info_before=["The town of Ashford sits by a cold lake."],
    world_info_after=["The café on Elm Street closes at six."],
    anchor_before="[Keep the replies short.]",
    anchor_after="[Nanashi is tired today.]",
)


def test_a_card_with_lorebook_entries_becomes_the_card_format():
    prompt = instruct_prompt(preset("Herrsimian-context"), preset("Herrsimian-instruct"), REALISTIC, "Nanashi")
    assert format_problems(prompt) == []
    opening, *turns = prompt.split("\n\n::::")
    assert opening == (
        "::::user: Let's engage together in a roleplay.\n\n"
        "[Keep the replies short.]\n\n"
        "The town of Ashford sits by a cold lake.\n\n"
        "# Characters\n\n"
        "## Nanashi\nAnon's long-time friend. Can be somewhat terse.\nDry humour, loyal.\n\n"
        "## Anon\nOur main protagonist. A completely normal person.\n\n"
        "# Scenario\nAfter meeting together, Anon and Nanashi have a little chat.\n\n"
        "The café on Elm Street closes at six.\n\n"
        "[Nanashi is tired today.]"
    )
    assert turns == [
        'assistant:Nanashi: "Oh. You came," Nanashi said.',
        'user:Anon: "Hello," said Anon, "How are you?"',
        "assistant:Nanashi: ",
    ]


def test_a_group_chat_labels_whoever_speaks():
    context, instruct = preset("Herrsimian-group-context"), preset("Herrsimian-instruct")
    prompt = instruct_prompt(context, instruct, lighthouse_group(), "Greta", join_prefix=GROUP_JOIN_PREFIX)
    assert format_problems(prompt) == []
    assert prompt.startswith(
        "::::user: Let's engage together in a roleplay.\n\n# Characters\n\n"
        "## Greta\nA retired lighthouse keeper.\n\n## Tomas\nHer nephew, a fisherman.\n\n"
        "## Anon\nA traveller caught in the storm.\n\n# Scenario\nA stormy night at the lighthouse."
    )
    assert prompt.endswith(
        '\n\n::::assistant:Greta: "Come in," Greta called.\n\n::::assistant:Tomas: Tomas opened the door and '
        "stepped aside.\n\n::::assistant:Greta: "
    )


def test_sillytavern_and_our_chat_route_build_the_same_prompt():
    chat = Chat(
        user="Anon",
        persona="",
        cards=[Card("Nanashi", "Anon's long-time friend.", scenario="A chat.")],
        messages=[
            Message("Anon", '"Hello," said Anon.', is_user=True),
            Message("Nanashi", '"Hi," said Nanashi.'),
            Message("Anon", "Anon smiled.", is_user=True),
        ],
    )
    assembled = instruct_prompt(preset("Herrsimian-context"), preset("Herrsimian-instruct"), chat, "Nanashi")
    ours = render_prompt(
        [Message_("assistant" if m.name == "Nanashi" else "user", m.text, m.name) for m in chat.messages],
        Setting(characters=(Character("Nanashi", "Anon's long-time friend."),), scenario="A chat."),
    )
    assert assembled == ours.text + " "  # SillyTavern ends at the label's space; the label-space trim handles it


# SillyTavern's default System Prompt ("Neutral - Chat"), on unless the user turns it off.
NEUTRAL_CHAT = "Write {{char}}'s next reply in a fictional chat between {{char}} and {{user}}."
EXAMPLES = {
    "Nanashi": '<START>\n{{user}}: "Hi."\n{{char}}: Nanashi nodded. "Hey."\n'
    '<START>\n{{char}}: "Coffee?" {{char}} asked.',
    "Greta": '<START>\n{{char}}: Greta tapped the barometer. "Falling."',
    "Tomas": '<START>\n{{user}}: "Any fish?"\n{{char}}: "None," Tomas said.',
}


@pytest.mark.parametrize("template", ["Herrsimian-context", "Herrsimian-group-context"])
def test_sillytavern_system_prompt_never_reaches_the_prompt(template):
    """The model is not an instruction model: the shipped templates leave SillyTavern's System Prompt out."""
    chat = dataclasses.replace(REALISTIC, system_prompt=NEUTRAL_CHAT)
    prompt = instruct_prompt(preset(template), preset("Herrsimian-instruct"), chat, "Nanashi")
    assert "Write" not in prompt and "fictional chat" not in prompt
    assert prompt == instruct_prompt(preset(template), preset("Herrsimian-instruct"), REALISTIC, "Nanashi")


def test_example_dialogue_sits_in_the_opening_turn_under_each_speaker():
    """With "Example Messages Behavior: Never include examples", the examples are in the opening turn only, each
    line under its own speaker's name, and the chat's turns are the chat's."""
    card = dataclasses.replace(REALISTIC.cards[0], mes_example=EXAMPLES["Nanashi"])
    chat = dataclasses.replace(REALISTIC, cards=[card], examples_behavior="strip")
    prompt = instruct_prompt(preset("Herrsimian-context"), preset("Herrsimian-instruct"), chat, "Nanashi")
    assert format_problems(prompt) == []
    opening, *turns = prompt.split("\n\n::::")
    assert opening.endswith(
        "[Nanashi is tired today.]\n\n"
        "# Example dialogue\n"
        '***\nAnon: "Hi."\nNanashi: Nanashi nodded. "Hey."\n'
        '***\nNanashi: "Coffee?" Nanashi asked.'
    )
    assert turns == [
        'assistant:Nanashi: "Oh. You came," Nanashi said.',
        'user:Anon: "Hello," said Anon, "How are you?"',
        "assistant:Nanashi: ",
    ]


def test_examples_left_in_the_chat_never_become_turns():
    """The default behaviour also sends the examples after the opening text: raw (the instruct template skips
    formatting them), so no example line is labelled as the character about to speak."""
    card = dataclasses.replace(REALISTIC.cards[0], mes_example=EXAMPLES["Nanashi"])
    chat = dataclasses.replace(REALISTIC, cards=[card])
    prompt = instruct_prompt(preset("Herrsimian-context"), preset("Herrsimian-instruct"), chat, "Nanashi")
    assert [turn.split(": ")[0] for turn in prompt.split("\n\n::::")[1:]] == [
        "assistant:Nanashi",
        "user:Anon",
        "assistant:Nanashi",
    ]


def test_a_group_keeps_each_members_personality_and_examples():
    group = lighthouse_group()
    cards = [
        dataclasses.replace(group.cards[0], personality="Gruff but kind.", mes_example=EXAMPLES["Greta"]),
        dataclasses.replace(group.cards[1], personality="Cheerful.", mes_example=EXAMPLES["Tomas"]),
    ]
    chat = dataclasses.replace(group, cards=cards, examples_behavior="strip", system_prompt=NEUTRAL_CHAT)
    context, instruct = preset("Herrsimian-group-context"), preset("Herrsimian-instruct")
    values = story_values(chat, "Tomas", GROUP_JOIN_PREFIX, context["example_separator"])
    assert story_string_warnings(context["story_string"], values) == []  # no "Story String Validation" toast
    prompt = instruct_prompt(context, instruct, chat, "Tomas", join_prefix=GROUP_JOIN_PREFIX)
    assert format_problems(prompt) == []
    opening = prompt.split("\n\n::::")[0]
    assert opening == (
        "::::user: Let's engage together in a roleplay.\n\n# Characters\n\n"
        "## Greta\nA retired lighthouse keeper.\n\n## Tomas\nHer nephew, a fisherman.\n\n"
        "## Anon\nA traveller caught in the storm.\n\n"
        "# Personalities\n\n## Greta\nGruff but kind.\n\n## Tomas\nCheerful.\n\n"
        "# Scenario\nA stormy night at the lighthouse.\n\n"
        "# Example dialogue\n"
        "***\n## Greta\n"
        '***\nGreta: Greta tapped the barometer. "Falling."\n\n## Tomas\n'
        '***\nAnon: "Any fish?"\nTomas: "None," Tomas said.'
    )


def test_the_old_group_template_dropped_personalities():
    old = preset("Herrsimian-group-context")["story_string"].replace("{{personality}}", "")
    group = lighthouse_group()
    chat = dataclasses.replace(group, cards=[dataclasses.replace(card, personality="x") for card in group.cards])
    assert story_string_warnings(old, story_values(chat, "Greta", GROUP_JOIN_PREFIX)) == ["personality"]
