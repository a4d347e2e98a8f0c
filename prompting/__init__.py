"""The `::::` roleplay format, in pure Python (no torch)."""

from prompting.labels import LABEL_MARK, STOP_STRING

__all__ = ["LABEL_MARK", "STOP_STRING"]
