"""Banned strings: text a request must never receive. When one appears, the engine backs off to the token that
began it, bans that token at that position, and samples again.

To make backing off invisible to the client, text is only sent up to the start of the token that holds the
first still-undecided character, so every token from there on can be taken back.
"""

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import NamedTuple

from server.engine.text.detokenizer import IncrementalDetokenizer
from server.engine.text.stops import StopCheckpoint, StopMatcher, StopScan

# After this many back-offs a request ends with what it has: a model that keeps writing a banned string must not
# spin forever.
MAX_BACKOFFS = 64


class TokenCheckpoint(NamedTuple):
    """The text state before one generated token."""

    decoder: tuple[bytes, int]
    stops: StopCheckpoint


@dataclass
class BannedStringGuard:
    checkpoints: list[TokenCheckpoint] = field(default_factory=list)  # one per generated token
    outbox: str = ""  # released by the stop matcher, not yet sent
    out_start: int = 0  # where `outbox` starts in the whole text
    bans_at: dict[int, set[int]] = field(default_factory=dict)  # output position -> tokens banned there
    backoffs: int = 0

    @property
    def exhausted(self) -> bool:
        return self.backoffs >= MAX_BACKOFFS

    def before_token(self, detokenizer: IncrementalDetokenizer, stops: StopMatcher) -> None:
        self.checkpoints.append(TokenCheckpoint(detokenizer.checkpoint(), stops.checkpoint()))

    def sendable(self, scan: StopScan, stops: StopMatcher) -> str:
        """Of what the stop matcher released, the part before the token holding the first held character."""
        self.outbox += scan.release
        boundary = stops.position
        if scan.held:
            starts = self._token_starts()
            boundary = starts[bisect_right(starts, stops.position - len(scan.held)) - 1]
        cut = max(boundary - self.out_start, 0)
        text, self.outbox = self.outbox[:cut], self.outbox[cut:]
        self.out_start += len(text)
        return text

    def flush(self, final: str) -> str:
        text, self.outbox = self.outbox + final, ""
        return text

    def bans_for(self, position: int) -> frozenset[int]:
        return frozenset(self.bans_at.get(position, ()))

    def back_off(
        self, banned_at: int, output_ids: list[int], detokenizer: IncrementalDetokenizer, stops: StopMatcher
    ) -> int:
        """Restores the state from before the token that wrote character `banned_at`, bans that token there, and
        returns its position: the tokens from it on are to be discarded."""
        starts = self._token_starts()
        position = bisect_right(starts, banned_at) - 1
        self.backoffs += 1
        self.bans_at = {p: bans for p, bans in self.bans_at.items() if p <= position}
        self.bans_at.setdefault(position, set()).add(output_ids[position])
        checkpoint = self.checkpoints[position]
        del self.checkpoints[position:]
        held = checkpoint.stops.held
        released_end = checkpoint.stops.position - len(held)
        if released_end >= self.out_start:
            self.outbox = self.outbox[: released_end - self.out_start]
        else:  # part of what was held then has been sent since
            held, self.outbox = held[self.out_start - released_end :], ""
        detokenizer.restore(checkpoint.decoder)
        stops.restore(checkpoint.stops._replace(held=held))
        return position

    def _token_starts(self) -> list[int]:
        """Where each generated token's text starts."""
        return [checkpoint.stops.position for checkpoint in self.checkpoints]
