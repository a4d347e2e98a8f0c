"""The device's memory for KV caches, and handing freed host memory back when the engine goes idle.

On CPU the KV caches live in host memory, allocated and freed in sizes that vary with every prompt; glibc keeps
the freed blocks in its arenas, so resident memory creeps up under load even when nothing leaks (bench/load.py
showed it; RESULTS.md has the figures). `malloc_trim` returns what is free; it runs only when the engine has
nothing to do, so it never delays a step.
"""

import ctypes
import ctypes.util
import functools
import os

import torch

# Kept free for activations (a prefill chunk's attention and MLP intermediates) beside weights and KV cache.
ACTIVATION_RESERVE_FRACTION = 0.05


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


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_host_memory(device: torch.device) -> None:
    """On CPU with glibc: give freed heap memory back to the system. Elsewhere: nothing to do."""
    libc = _libc()
    if device.type == "cpu" and libc is not None:
        libc.malloc_trim(0)
