"""Whether a whole prompt text is in the card's format (README, "The prompt"): it opens with one nameless
`::::user:` turn, every later label follows exactly one blank line, exactly one space follows every complete label
(the last label may end the prompt, at its colon or its space, for the model to write that turn), names are
trimmed, and `::::` appears nowhere but in labels. Used to check prompts that other programs build (SillyTavern's
templates), since `render_prompt` builds them right by construction."""

import re

from prompting.labels import LABEL_MARK, TURN_SEPARATOR

# A name starts right after the label's colon (`::::user: (OOC: x)` is a nameless label and its text).
_LABEL = re.compile(r"::::(user|assistant):(?:([^:\s][^:\n]*):)?")


def format_problems(prompt: str, bos_text: str = "") -> list[str]:
    """Every way `prompt` (after an optional leading `bos_text`) departs from the format; empty when it follows
    it."""
    text = prompt.removeprefix(bos_text) if bos_text else prompt
    labels = list(_LABEL.finditer(text))
    if not labels or labels[0].start() != 0:
        return ["the prompt must start with the opening `::::user:` turn"]
    problems = []
    if labels[0].group(1) != "user" or labels[0].group(2):
        problems.append("the opening turn must be a nameless `::::user:` turn")
    if text.count(LABEL_MARK) != len(labels):
        problems.append("`::::` appears outside a complete label")
    for number, label in enumerate(labels):
        where = f"label {number} ({label.group()!r})"
        name = label.group(2)
        if name is not None and name != name.strip():
            problems.append(f"{where}: the name has surrounding spaces")
        if number > 0:
            before = text[: label.start()]
            if not before.endswith(TURN_SEPARATOR) or before.endswith("\n" + TURN_SEPARATOR):
                problems.append(f"{where}: not preceded by exactly one blank line")
        after = text[label.end() :]
        ends_prompt = number == len(labels) - 1 and after in ("", " ")
        if not ends_prompt and not (after.startswith(" ") and after[1:2] not in ("", " ", "\n")):
            problems.append(f"{where}: not followed by exactly one space and the turn's text")
    return problems
