"""The engine's counters and token timings, read by /health and /metrics; written only by the engine thread (in
the engine process; the server's copy comes up with each step)."""

from dataclasses import dataclass, fields, replace
from typing import Protocol

# What describes the engine now; every other field counts since its start.
GAUGES = frozenset(
    {
        "decode_mode",
        "quantization",
        "quantization_kl",
        "quantization_top1",
        "running",
        "waiting",
        "running_caches",
        "prefix_cache_entries",
        "prefix_cache_tokens",
        "batch_cache_tokens",
    }
)


@dataclass
class EngineStats:
    decode_mode: str = "eager"  # "captured" or "eager" (what the self-check left, whatever was asked)
    quantization: str = "none"  # of the decoder's linear layers (--quantization)
    quantization_kl: float | None = None  # its load-time check: mean KL (nats) against the unquantized model
    quantization_top1: float | None = None  # and the share of the probe's positions with the same top token
    running: int = 0
    waiting: int = 0
    running_caches: int = 0  # KV caches held for running requests and prompts being prefilled (not the prefix cache)
    generated_tokens: int = 0
    finished_requests: int = 0
    prefilled_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from the prefix cache instead, in place
    shifted_tokens: int = 0  # prompt tokens taken from the prefix cache from other positions (cache reuse)
    prefix_cache_entries: int = 0
    prefix_cache_tokens: int = 0
    prompt_tokens: int = 0  # of every admitted request
    batch_cache_tokens: int = 0  # KV positions allocated for the running requests, padding included
    failed_requests: int = 0
    timed_out_requests: int = 0
    restarts: int = 0  # of the engine process, by the server's supervision
    # The engine's host time: its steps, and within them the model's forwards and the sampling chain (on a GPU,
    # the time to launch their work, and for sampling also to wait for the step's tokens).
    steps: int = 0
    mixed_steps: int = 0  # steps whose decode rows and prompt chunks ran as one forward (forward/mixed_step.py)
    step_seconds: float = 0.0
    forward_seconds: float = 0.0
    sampling_seconds: float = 0.0


def continued(earlier: EngineStats, current: EngineStats, **more: int) -> EngineStats:
    """`current`'s gauges with the counters of both (an engine process's counters after those of the ones that
    died before it), plus `more` of the named counters."""
    counts = {
        f.name: getattr(earlier, f.name) + getattr(current, f.name) + more.get(f.name, 0)
        for f in fields(EngineStats)
        if f.name not in GAUGES
    }
    return replace(current, **counts)


class TokenTimings(Protocol):
    """What the engine reports about its pace, for the metrics: when each request's tokens arrive."""

    def first_token(self, seconds: float) -> None:
        """Seconds from a request's submission to its first generated token."""

    def token_gap(self, seconds: float) -> None:
        """Seconds between two consecutive tokens of one request."""
