"""How many KV-cache tokens the server may hold and what a request is counted for (torch-free: the HTTP process
reads the budget for /metrics).

The budget covers the running requests' cache and the prefix cache together. Running requests come first: when
admitting one needs room, prefix-cache entries are evicted; a request whose room is not there waits in the queue.
"""

from dataclasses import dataclass

# Generated tokens a request is counted for beyond its prompt when it asks for more (or names no max_tokens):
# such a request may outgrow that, and an out-of-memory error then fails it alone.
GENERATION_RESERVE_TOKENS = 2048


def reservation(prompt_tokens: int, max_tokens: int, context_length: int) -> int:
    """KV positions a request is counted for: its prompt and what it may generate, within the reserve."""
    return min(prompt_tokens + min(max_tokens, GENERATION_RESERVE_TOKENS), context_length)


@dataclass(frozen=True)
class KvBudget:
    """The KV memory in tokens: running requests and the prefix cache share `tokens`; the prefix cache never
    holds more than `prefix_tokens`."""

    bytes_per_token: int
    tokens: int
    prefix_tokens: int

    @classmethod
    def of(cls, budget_bytes: int, bytes_per_token: int, prefix_cache_mb: int) -> "KvBudget":
        tokens = budget_bytes // bytes_per_token
        return cls(bytes_per_token, tokens, min(prefix_cache_mb * 2**20 // bytes_per_token, tokens))
