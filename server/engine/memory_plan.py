"""What the device's memory holds once the model is loaded: the weights, the KV cache's budget, and how many
chats that budget holds at once. Logged at start-up and in /health, so that a user sees what a quantization or
an 8-bit KV cache bought before sending a request (torch-free: the HTTP process reads it)."""

from collections.abc import Callable
from dataclasses import dataclass

# The chat length the plan counts in: a long roleplay scene; a context shorter than that counts whole contexts.
PLAN_CHAT_TOKENS = 8192


@dataclass(frozen=True)
class MemoryPlan:
    weights_bytes: int  # the model's parameters and buffers as served (after quantization)
    quantization: str  # of the decoder's linear layers
    kv_cache_dtype: str  # how keys and values are stored
    kv_bytes_per_token: int
    kv_budget_bytes: int  # running requests and the prefix cache together
    kv_budget_tokens: int
    chat_tokens: int  # the chat length `chats` counts
    chats: int  # chats of `chat_tokens` the KV budget holds at once, bucket padding included

    def summary(self) -> str:
        return (
            f"weights {self.weights_bytes / 1e9:.2f} GB ({self.quantization}); KV cache ({self.kv_cache_dtype}) "
            f"{self.kv_budget_bytes / 2**20:,.0f} MiB at {self.kv_bytes_per_token:,} bytes a token: "
            f"{self.kv_budget_tokens:,} tokens, {self.chats:,} chats of {self.chat_tokens:,} tokens at once"
        )


def chats_that_fit(footprint: Callable[[list[int]], int], budget_tokens: int, chat_tokens: int) -> int:
    """The most chats of `chat_tokens` whose KV positions (`footprint` of their reservations, as admission counts
    them) stay within the budget."""
    fits = 0
    upper = budget_tokens // max(chat_tokens, 1) + 1  # a chat takes at least its own tokens
    while fits < upper:  # the largest count that fits, by bisection: the footprint grows with the count
        middle = (fits + upper + 1) // 2
        if footprint([chat_tokens] * middle) <= budget_tokens:
            fits = middle
        else:
            upper = middle - 1
    return fits
