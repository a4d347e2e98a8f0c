"""Handing freed host memory back to the system when the engine goes idle.

On CPU the KV caches live in host memory, allocated and freed in sizes that vary with every prompt; glibc keeps
the freed blocks in its arenas, so resident memory creeps up under load even when nothing leaks (bench/load.py
showed it; RESULTS.md has the figures). `malloc_trim` returns what is free; it runs only when the engine has
nothing to do, so it never delays a step.
"""

import ctypes
import ctypes.util
import functools

import torch


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
