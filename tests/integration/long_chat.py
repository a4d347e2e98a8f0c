"""A roleplay longer than the context, sent the way SillyTavern sends it: the story string stays, and every turn
the oldest messages are dropped until the prompt and the reply fit. Shared by the cache-reuse test and
bench/long_chat.py."""

from collections.abc import Callable

STORY = (
    "::::user: Let's engage together in a roleplay.\n\n# Characters\n\n## Nanashi\nA wandering swordswoman who "
    "speaks little and notices everything.\n\n## Anon\nA cartographer lost in the mountains.\n\n# Scenario\nA "
    "mountain pass in winter; a storm is coming."
)
SPEAKERS = ("user:Anon", "assistant:Nanashi")


def message(turn: int) -> str:
    """The turn-th message of the chat, a few sentences long."""
    side = SPEAKERS[turn % 2]
    return (
        f"::::{side}: Turn {turn}. The wind rose over the pass and the snow came sideways. "
        f'"We walk until the cairn at the {turn}th bend," said one of them, checking the map again. '
        "Neither of them looked back at the trail they had left behind."
    )


def trimmed_prompt(turns: int, fits: Callable[[str], bool], chat: str = "") -> str:
    """The prompt for the reply after `turns` messages: the story string (with `chat` first, to tell chats
    apart), then the newest messages that fit, ending at the label of the next speaker."""
    story = STORY.replace("roleplay.", f"roleplay. {chat}".rstrip(), 1)
    label = f"::::{SPEAKERS[turns % 2]}:"
    kept: list[str] = []
    for turn in range(turns - 1, -1, -1):
        candidate = "\n\n".join([story, message(turn), *kept, label])
        if not fits(candidate):
            break
        kept.insert(0, message(turn))
    return "\n\n".join([story, *kept, label])
