"""What the engine is built from: the model to load (`ModelSpec`) and the engine's settings (`EngineOptions`), one
object handed from the server's settings to the engine process. Torch-free: the HTTP process builds these."""

import re
from dataclasses import dataclass, field
from pathlib import Path

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
QUANTIZATIONS = ("none", "int8", "int4", "fp8")
INT4_GROUP_SIZES = (256, 128, 64, 32)  # what torch's int4 kernels take
# The model served when none is configured (model/default_model.py) and the name it is served under.
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    """Where the embedded model's converted folder is kept unless configured."""
    return Path.home() / ".cache" / "rpserve"


class ModelLoadError(Exception):
    """The model, its adapter or the requested device cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load and where."""

    model: str | None = None  # a hub id or a folder; None: the embedded model
    adapter: str | None = None
    merge: bool = True
    device: str = "auto"
    dtype: str = "auto"
    served_name: str | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    quantization: str = "none"  # one of QUANTIZATIONS: the decoder's linear layers, after the adapter is merged
    int4_group_size: int = 128  # input columns sharing a scale and offset, with int4

    def __post_init__(self) -> None:
        """What can be checked without loading is checked here, at once: the device's spelling and the local
        folders. Whether the device exists and the weights load is found where the model loads."""
        if not _DEVICE.fullmatch(self.device):
            raise ModelLoadError(f"unknown device '{self.device}': use auto, cpu, cuda or cuda:N")
        if self.quantization not in QUANTIZATIONS:
            raise ModelLoadError(f"unknown quantization '{self.quantization}': use one of {', '.join(QUANTIZATIONS)}")
        if self.int4_group_size not in INT4_GROUP_SIZES:
            sizes = ", ".join(map(str, sorted(INT4_GROUP_SIZES)))
            raise ModelLoadError(f"unknown int4 group size {self.int4_group_size}: use one of {sizes}")
        if self.quantization != "none" and self.adapter and not self.merge:
            raise ModelLoadError(f"--quantization {self.quantization} quantizes the merged model: drop --no-merge")
        if self.model:
            local_or_hub(self.model, "model", "config.json")
        if self.adapter:
            local_or_hub(self.adapter, "adapter", "adapter_config.json")


def local_or_hub(source: str, what: str, marker: str) -> str:
    """A source written as a path must be an existing folder holding `marker`; anything else is taken for a hub
    id."""
    path = Path(source).expanduser()
    if not (source.startswith(("/", "./", "../", "~")) or path.exists()):
        return source
    if not path.is_dir():
        raise ModelLoadError(f"{what} folder '{source}' does not exist or is not a folder")
    if not (path / marker).is_file():
        raise ModelLoadError(f"{what} folder '{source}' has no {marker}")
    return str(path)


def served_name(spec: ModelSpec) -> str:
    if spec.served_name:
        return spec.served_name
    source = spec.adapter or spec.model
    return Path(source.rstrip("/")).name if source else EMBEDDED_MODEL_NAME


@dataclass(frozen=True)
class EngineOptions:
    """The engine's settings, as the engine process builds it."""

    model: ModelSpec = field(default_factory=ModelSpec)
    max_running: int = 8
    prefix_cache_mb: int = 0
    kv_cache_mb: int | None = None  # None: a share of the device's memory once the model is loaded
    memory_fraction: float = 0.9
    prefill_chunk: int = 512
    max_model_len: int | None = None  # the context allowed, at most the model's; None: the model's
    request_timeout: float | None = None
    log_content: bool = False
    decode_mode: str = "eager"  # "eager", "captured" (self-checked, eager when that fails) or "auto"
    packed_weights: bool = True  # on the CPU, linear layers on oneDNN-packed weights (forward/packed_linear.py)
    kv_cache_dtype: str = "auto"  # how the KV cache stores keys and values (kv/kv_format.py)
    cpu_kernels: bool = True  # on the CPU, the engine's compiled kernels (forward/cpu_kernels.py), kept in cache_dir
    log_level: str = "info"
