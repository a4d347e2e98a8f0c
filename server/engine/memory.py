"""How many KV-cache tokens the server may hold, from a share of the device's memory, and whether a request fits.

The budget covers the running requests' cache and the prefix cache together. Running requests come first: when
admitting one needs room, prefix-cache entries are evicted; a request whose room is not there waits in the queue.
"""

import os
from dataclasses import dataclass

import torch

# Kept free for activations (a prefill chunk's attention and MLP intermediates) beside weights and KV cache.
ACTIVATION_RESERVE_FRACTION = 0.05
# Generated tokens a request is counted for beyond its prompt when it asks for more (or names no max_tokens):
# such a request may outgrow that, and an out-of-memory error then fails it alone.
GENERATION_RESERVE_TOKENS = 2048


def kv_budget_bytes(device: torch.device, fraction: float) -> int:
    """Memory for KV caches: `fraction` of the device's memory minus what is in use already (the weights, and on
    a GPU whatever else runs there) and a reserve for activations. On CPU, the share is of the memory available."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return max(int(total * (fraction - ACTIVATION_RESERVE_FRACTION)) - (total - free), 0)
    return max(int(available_ram_bytes() * (fraction - ACTIVATION_RESERVE_FRACTION)), 0)


def available_ram_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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


def kv_bytes_per_token(config: object, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize
