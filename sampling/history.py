"""Token histories of the running sequences, one row each, kept on the model's device.

Besides the tokens, each row keeps DRY's match lengths: `match[i]` is the length of the longest common suffix of
`history[..i]` and the whole history. Appending token t updates every row's lengths with one vectorised
operation (match'[i] = match[i-1] + 1 where history[i] == t, else 0), so DRY never walks the history in Python
after the prompt.
"""

from collections.abc import Sequence

import torch


def suffix_match_lengths(history: Sequence[int]) -> list[int]:
    """For every i < len(history) - 1: the longest common suffix of history[..i] and history (Z-function of the
    reversed history), in O(n)."""
    reverse = list(reversed(history))
    n = len(reverse)
    z = [0] * n
    left = right = 0
    for k in range(1, n):
        if k < right:
            z[k] = min(right - k, z[k - left])
        while k + z[k] < n and reverse[z[k]] == reverse[k + z[k]]:
            z[k] += 1
        if k + z[k] > right:
            left, right = k, k + z[k]
    return [z[n - 1 - i] for i in range(n - 1)]


class TokenHistories:
    def __init__(self, rows: int, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        self.tokens = torch.zeros(rows, capacity, dtype=torch.long, device=device)
        self.match = torch.zeros(rows, capacity, dtype=torch.long, device=device)
        self.is_breaker = torch.zeros(rows, capacity, dtype=torch.bool, device=device)
        self.lengths = [0] * rows
        self.columns = torch.arange(capacity + 1, device=device)  # views of it number a step's columns

    def start(self, row: int, history: Sequence[int], breaker_flags: Sequence[bool]) -> None:
        length = len(history)
        if length > self.capacity:
            raise ValueError(f"history of {length} tokens exceeds the capacity of {self.capacity}")
        self.tokens[row, :length] = torch.tensor(history, dtype=torch.long)
        self.match[row].zero_()
        if length > 1:
            self.match[row, : length - 1] = torch.tensor(suffix_match_lengths(history), dtype=torch.long)
        self.is_breaker[row, :length] = torch.tensor(breaker_flags, dtype=torch.bool)
        self.lengths[row] = length

    def append(
        self, rows: Sequence[int], tokens: torch.Tensor, breaker_flags: Sequence[bool], *, matches: bool = True
    ) -> None:
        """Appends one token to each row (rows full to capacity keep their last token). `matches`: update DRY's
        match lengths too; without it they go stale, which is right only for rows that never use DRY (the
        update walks each row's whole history: the costliest part of a step on a CPU)."""
        slots = [min(self.lengths[r], self.capacity - 1) for r in rows]
        # One tensor (one copy on a GPU) for the rows, their positions and their breaker flags.
        index, positions, flags = torch.tensor([rows, slots, list(breaker_flags)], device=self.device)
        if matches:
            width = max(slots) + 1  # from host-side lengths: no device synchronisation
            history = self.tokens.index_select(0, index)[:, :width]
            previous = self.match.index_select(0, index)[:, :width]
            shifted = torch.nn.functional.pad(previous[:, :-1], (1, 0))
            columns = self.columns[:width]
            current = (history == tokens.unsqueeze(1)) & (columns < positions.unsqueeze(1))
            self.match[index, :width] = torch.where(current, shifted + 1, 0)
        self.tokens[index, positions] = tokens
        self.is_breaker[index, positions] = flags.bool()
        for r in rows:
            self.lengths[r] = min(self.lengths[r] + 1, self.capacity)
