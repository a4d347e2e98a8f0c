from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from server.engine.model.default_model import embedded_model_folder
from server.settings import Settings
from tests.integration.server_process import ServerProcess


@pytest.fixture(scope="session")
def model_folder() -> Path:
    return embedded_model_folder(Settings().cache_dir)


@pytest.fixture(scope="session")
def adapter_folder(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the embedded model with small random (non-zero) weights, saved the way peft saves."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.1)
    folder = tmp_path_factory.mktemp("adapter")
    adapted.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def server(adapter_folder: Path) -> Iterator[ServerProcess]:
    process = ServerProcess("--adapter", str(adapter_folder)).wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http
