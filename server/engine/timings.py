"""What the engine reports about its pace, for the metrics: when each request's tokens arrive."""

from typing import Protocol


class TokenTimings(Protocol):
    def first_token(self, seconds: float) -> None:
        """Seconds from a request's submission to its first generated token."""

    def token_gap(self, seconds: float) -> None:
        """Seconds between two consecutive tokens of one request."""
