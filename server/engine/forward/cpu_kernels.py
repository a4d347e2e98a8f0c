"""The engine's C++ CPU kernels (kernels/*.cpp: a decode step's attention over the bucket cache with its rotary
embedding and cache write, a prompt chunk's attention over its prompt's cache, RMSNorm, the MLP's activation,
linear layers' products on weight panels), compiled on
this machine for its own instruction set the first time a CPU model is served, then loaded from the cache
directory at every later start.

Why compile here rather than ship binaries: the kernels are written once with the compiler's vector extensions
and built with `-march=native`, so one source runs at the width of whatever CPU serves (AVX2, AVX512, NEON); the
build needs a C++ compiler (`g++`), which every Linux distribution has and `python:3` images include. Where the
build fails (no compiler, an unusual platform), one warning says why and the model runs on transformers'
operators as before: nothing else changes. `--compile off` skips them.
"""

import fcntl
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

log = logging.getLogger(__name__)

NAME = "rpserve_cpu"
SOURCES = (
    "library.cpp",
    "decode_attention.cpp",
    "chunk_attention.cpp",
    "rms_norm.cpp",
    "silu_mul.cpp",
    "panel_linear.cpp",
)
_FOLDER = Path(__file__).parent / "kernels"
# -ffp-contract=off: the rotary embedding rounds each product as torch does, so keys written by a decode step are
# the keys a prefill writes (bit for bit in float32); contracting into FMAs would change their last bits.
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]

KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # what every kernel computes in

_loaded: bool | None = None  # None until the first attempt: a failure is reported once per process


def load_cpu_kernels(cache_dir: Path) -> bool:
    """Whether `torch.ops.rpserve_cpu` is ready: built into (or found in) `cache_dir`, and loaded."""
    global _loaded
    if _loaded is None:
        _loaded = _build_and_load(_build_folder(cache_dir))
    return _loaded


def _build_and_load(folder: Path) -> bool:
    problem = _missing_tool()
    if problem is None:
        problem = _build(folder)
    if problem is not None:
        log.warning("CPU kernels unavailable (%s): serving on transformers' operators (--compile off: none)", problem)
    return problem is None


def _build(folder: Path) -> str | None:
    """Builds (where the sources or flags changed) and loads the kernels; what went wrong, if anything."""
    fresh = not (folder / f"{NAME}.so").exists()
    if fresh:
        log.info("compiling the CPU kernels for this machine into %s (the first start only; some 30 s)", folder)
    started = time.perf_counter()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "build.flock").open("w") as handle:
            # One build at a time (servers starting together wait for the first). torch's own lock is a file that
            # a killed build leaves behind, after which torch waits forever; this lock dies with its process, so
            # whoever holds it knows a torch lock file present is stale.
            fcntl.flock(handle, fcntl.LOCK_EX)
            (folder / "lock").unlink(missing_ok=True)
            cpp_extension.load(
                name=NAME,
                sources=[str(_FOLDER / source) for source in SOURCES],
                extra_cflags=_FLAGS,
                build_directory=str(folder),
                is_python_module=False,
                verbose=False,
            )
    except Exception as error:  # the compiler's or the loader's, whatever it is: the model runs without them
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        return next((line for line in lines if "error:" in line), lines[0])
    elapsed = time.perf_counter() - started
    if fresh or elapsed > 2:  # built, not just loaded (sources changed since the last build)
        log.info("CPU kernels compiled in %.0f s", elapsed)
    return None


def _missing_tool() -> str | None:
    """What the build needs and this machine lacks: a C++ compiler, ninja (the `ninja` package installs one next to
    this Python, which a shell's PATH may not include)."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler '{compiler}' on PATH: install g++"
    if shutil.which("ninja") is None:
        bin_dir = Path(sys.executable).parent
        if not (bin_dir / "ninja").exists():
            return "no ninja on PATH: pip install ninja"
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return None


def _build_folder(cache_dir: Path) -> Path:
    """One folder per torch version, CPU and checkout: a build for another instruction set or ABI is never loaded,
    and two installations sharing a cache directory do not rebuild each other's (the build records its sources'
    paths)."""
    return cache_dir / "cpu-kernels" / f"torch-{torch.__version__}-{platform.machine()}-{_signature()}"


def _signature() -> str:
    """A short hash of what `-march=native` compiles for (the CPU's model and feature flags, where Linux says) and
    of where the sources are."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = [platform.processor()]
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return hashlib.sha1("\n".join([*sorted(set(wanted)), str(_FOLDER)]).encode()).hexdigest()[:12]
