"""The engine's counters, read by /health and /metrics; written only by the engine thread (in the
engine process; the server's copy comes up with each step)."""

from dataclasses import dataclass


@dataclass
class EngineStats:
    decode_mode: str = "eager"  # "captured" or "eager" (what the self-check left, whatever was asked)
    running: int = 0
    waiting: int = 0
    running_caches: int = 0  # KV caches held for running requests and prompts being prefilled (not the prefix cache)
    generated_tokens: int = 0
    finished_requests: int = 0
    prefilled_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from the prefix cache instead
    prefix_cache_entries: int = 0
    prefix_cache_tokens: int = 0
    prompt_tokens: int = 0  # of every admitted request
    batch_cache_tokens: int = 0  # KV positions allocated for the running requests, padding included
    failed_requests: int = 0
    timed_out_requests: int = 0
    # The engine's host time: its steps, and within them the model's forwards and the sampling chain (on a GPU,
    # the time to launch their work, and for sampling also to wait for the step's tokens).
    steps: int = 0
    step_seconds: float = 0.0
    forward_seconds: float = 0.0
    sampling_seconds: float = 0.0
