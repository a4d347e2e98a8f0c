"""Stop strings matched on the generated text, across token boundaries, with hold-back.

Text that could still be the start of a stop string is held back; it is released as soon as it can no longer
be one, and never released once a stop matches. The client therefore never sees any part of a stop string.
"""

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class StopScan:
    release: str  # text safe to send now
    held: str  # text that may still begin a stop string
    stopped: bool  # a stop string matched; `release` ends right before it


def scan_for_stops(pending: str, stops: Iterable[str]) -> StopScan:
    """Splits `pending` (held text plus new text) at the earliest stop string, or at the longest tail that is a
    proper prefix of some stop string."""
    stops = tuple(stops)
    starts = [index for index in (pending.find(stop) for stop in stops) if index >= 0]
    if starts:
        return StopScan(release=pending[: min(starts)], held="", stopped=True)
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

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._held = ""

    def push(self, text: str) -> StopScan:
        scan = scan_for_stops(self._held + text, self._stops)
        self._held = scan.held
        return scan

    def flush(self) -> str:
        """Releases the held text when generation ends for another reason: it did not become a stop."""
        held, self._held = self._held, ""
        return held
