"""The engine: model loading, the engine process and its thread, scheduler, model runner, batch and prefix caches
and output processing. It knows nothing of HTTP, pydantic or the settings (see the import contracts in
pyproject.toml)."""
