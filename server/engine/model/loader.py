"""Loads the base model, applies the LoRA adapter, and picks the device and dtype."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from server.engine.forward.fp8_linear import fp8_problem
from server.engine.forward.quantization import QuantizationReport, quantize
from server.engine.model import default_model
from server.engine.options import ModelLoadError, ModelSpec, local_or_hub, served_name
from server.engine.text.vocabulary import Vocabulary

log = logging.getLogger(__name__)

T = TypeVar("T")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    vocabulary: Vocabulary
    name: str
    device: torch.device
    dtype: torch.dtype
    context_length: int
    quantization: QuantizationReport | None = None


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)  # spelled right: ModelSpec checks
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {requested} was requested but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {requested}: only {torch.cuda.device_count()} CUDA GPU(s) present")
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16, the model's own precision, on CUDA and on CPUs with bf16 matrix instructions; float32 on
    other CPUs, where bf16 is emulated and slower than float32."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_native_bf16() else torch.float32
    return _DTYPES[requested]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: there oneDNN's bf16 matrix products beat float32 ones (bench/RESULTS.md). torch only
    exposes the check privately, hence the guard."""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


def base_model_source(spec: ModelSpec) -> str:
    """The base model's folder or hub id; the embedded model's converted folder when none is configured."""
    if spec.model is None:
        return str(default_model.embedded_model_folder(spec.cache_dir))
    return local_or_hub(spec.model, "model", "config.json")


def load(spec: ModelSpec) -> LoadedModel:
    started = time.monotonic()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.quantization == "fp8" and (problem := fp8_problem(device)):
        raise ModelLoadError(problem)
    adapter = local_or_hub(spec.adapter, "adapter", "adapter_config.json") if spec.adapter else None
    source = base_model_source(spec)
    log.info("loading base model %s on %s (%s)", source, device, str(dtype).removeprefix("torch."))
    tokenizer = _load_or_explain(lambda: AutoTokenizer.from_pretrained(source), f"model '{source}'")
    model: PreTrainedModel = _load_or_explain(
        lambda: AutoModelForCausalLM.from_pretrained(source, dtype=dtype), f"model '{source}'"
    )
    if adapter:
        model = _apply_adapter(model, adapter, merge=spec.merge, base=source)
    # transformers wraps `to` in a decorator whose stub takes the model itself as the first argument.
    model = model.to(device).eval()  # type: ignore[arg-type]
    vocabulary = Vocabulary(tokenizer, model.get_output_embeddings().weight.shape[0], _eos_ids(model, tokenizer))
    report = (
        quantize(model, vocabulary, spec.quantization, spec.int4_group_size) if spec.quantization != "none" else None
    )
    log.info("model ready in %.1f s", time.monotonic() - started)
    return LoadedModel(
        model=model,
        vocabulary=vocabulary,
        name=served_name(spec),
        device=device,
        dtype=dtype,
        context_length=model.config.max_position_embeddings,
        quantization=report,
    )


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (a tied weight counted once)."""
    tensors = {tensor.data_ptr(): tensor for tensor in [*model.parameters(), *model.buffers()]}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def _apply_adapter(model: PreTrainedModel, adapter: str, *, merge: bool, base: str) -> PreTrainedModel:
    from peft import PeftModel

    log.info("applying LoRA adapter %s", adapter)
    try:
        adapted = PeftModel.from_pretrained(model, adapter)
    except RuntimeError as error:
        mismatch = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), None)
        if mismatch is None:
            raise ModelLoadError(f"cannot apply adapter '{adapter}': {_first_line(error)}") from error
        raise ModelLoadError(
            f"adapter '{adapter}' was made for another base model than '{base}' ({mismatch})"
        ) from error
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load adapter '{adapter}': {_first_line(error)}") from error
    if merge:
        log.info("merging the adapter into the weights")
        return adapted.merge_and_unload()
    # Unmerged, the PeftModel answers every attribute of the model it wraps (peft forwards them): it is used as one.
    return cast(PreTrainedModel, adapted)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, list) else [] if value is None else [value])
    return frozenset(ids)


def _load_or_explain(load_fn: Callable[[], T], what: str) -> T:
    try:
        return load_fn()
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load {what}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
