"""Which old messages a chat past its context leaves out.

Whole messages go, oldest first (the opening turn with the setting always stays), and never one at a time: the
number of tokens left out is rounded up to whole chunks. Dropping a single turn whenever the chat grows would
change the prompt's start at every new turn, so no prefix cache could ever be reused; with chunks the cut stays
put until the chat has grown by a chunk, and every turn in between reuses the cache of the one before.
"""

import itertools
import math
from collections.abc import Sequence


def messages_to_leave_out(message_tokens: Sequence[int], excess: int, chunk: int) -> int | None:
    """How many of the oldest messages to leave out so that at least `excess` tokens go, aiming for a whole
    number of `chunk`s of tokens. The last message always stays: None when leaving out all the others is not
    enough."""
    if excess <= 0:
        return 0
    totals = list(itertools.accumulate(message_tokens[:-1]))  # tokens left out with the first 1, 2, ... messages
    if not totals or totals[-1] < excess:
        return None
    target = min(math.ceil(excess / chunk) * chunk, totals[-1])  # the whole chunks, or as many as can go
    return next(count for count, total in enumerate(totals, start=1) if total >= target)
