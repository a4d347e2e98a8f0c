"""Stop strings matched on the generated text, across token boundaries, with hold-back.

Text that could still be the start of a stop string is held back; it is released as soon as it can no longer
be one, and never released once a stop matches. The client therefore never sees any part of a stop string.

A *turn stop* (the label mark, when a client lets the model write several turns) ends generation only at its
`turns`-th match; earlier matches are released as text, unless a longer stop string starting at the same place
could still follow (`\n\n::::user:` after `\n\n::::`): that one wins, so the text is held until it is decided.

A *banned string* is held back like a stop string; when one appears, nothing is released and the scan reports
where it starts (`banned_at`, counted in characters from the first text ever pushed), so the engine can back off
to the token that wrote it and sample another.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple


class StopCheckpoint(NamedTuple):
    held: str  # text held back as a possible start of a stop string
    passes_left: int  # turn stops still to let through
    position: int  # characters seen so far


@dataclass(frozen=True)
class StopScan:
    release: str  # text safe to send now
    held: str  # text that may still begin a stop string
    stopped: bool  # a stop string matched; `release` ends right before it
    stop: str | None = None  # which one
    banned_at: int | None = None  # a banned string appeared, starting at this character of the whole text


def scan_for_stops(pending: str, stops: Sequence[str]) -> StopScan:
    """Splits `pending` (held text plus new text) at the earliest stop string (the first listed among those
    starting there), or at the longest tail that is a proper prefix of some stop string."""
    found = [(index, order, stop) for order, stop in enumerate(stops) if (index := pending.find(stop)) >= 0]
    if found:
        index, _, stop = min(found)
        return StopScan(release=pending[:index], held="", stopped=True, stop=stop)
    held = max((_prefix_overlap(pending, stop) for stop in stops), default=0)
    cut = len(pending) - held
    return StopScan(release=pending[:cut], held=pending[cut:], stopped=False)


def _prefix_overlap(text: str, stop: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `stop`."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0


class StopMatcher:
    """Per-request state around `scan_for_stops`."""

    def __init__(
        self, stops: Iterable[str], turn_stops: Iterable[str] = (), turns: int = 1, banned: Iterable[str] = ()
    ) -> None:
        self._turn_stops = frozenset(stop for stop in turn_stops if stop)
        self._banned = frozenset(text for text in banned if text)
        ordered = [*(stop for stop in stops if stop), *sorted(self._turn_stops), *sorted(self._banned)]
        self._stops = tuple(dict.fromkeys(ordered))
        self._passes_left = turns - 1
        self._held = ""
        self.position = 0  # characters pushed so far

    def push(self, text: str) -> StopScan:
        start = self.position - len(self._held)  # where `pending` starts in the whole text
        pending, released = self._held + text, ""
        while True:
            scan = scan_for_stops(pending, self._stops)
            if scan.stopped and scan.stop in self._banned:
                self.position += len(text)
                offset = start + len(released) + len(scan.release)
                return StopScan(release="", held=self._held, stopped=False, stop=scan.stop, banned_at=offset)
            if scan.stopped and scan.stop in self._turn_stops and self._passes_left > 0:
                tail = pending[len(scan.release) :]
                if self._longer_stop_may_follow(tail):
                    self.position += len(text)
                    self._held = tail
                    return StopScan(released + scan.release, tail, stopped=False)
                self._passes_left -= 1
                cut = len(scan.release) + len(scan.stop)
                released, pending = released + pending[:cut], pending[cut:]
                continue
            self.position += len(text)
            self._held = scan.held
            return StopScan(released + scan.release, scan.held, scan.stopped, scan.stop)

    def _longer_stop_may_follow(self, tail: str) -> bool:
        """Whether `tail` (a turn stop and what follows it) could still grow into another, longer stop."""
        return any(
            len(stop) > len(tail) and stop.startswith(tail) for stop in self._stops if stop not in self._turn_stops
        )

    def flush(self) -> str:
        """Releases the held text when generation ends for another reason: it did not become a stop."""
        held, self._held = self._held, ""
        return held

    def checkpoint(self) -> StopCheckpoint:
        return StopCheckpoint(self._held, self._passes_left, self.position)

    def restore(self, checkpoint: StopCheckpoint) -> None:
        self._held, self._passes_left, self.position = checkpoint
