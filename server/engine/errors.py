"""Errors the engine reports to its callers as one clear sentence."""


class ModelLoadError(Exception):
    """The model, its adapter or the requested device cannot be used; the message says which and why."""
