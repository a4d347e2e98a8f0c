"""Start-up problems end the process with one clear line, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tests.integration.server_process import ROOT, free_port


def start(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "server", "--port", str(free_port()), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str, status: int = 1) -> None:
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rpserve: error: ")
    assert fragment in last


@pytest.fixture(scope="module")
def foreign_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA made for a much smaller Llama: its matrices cannot fit the embedded model."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    adapted = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    folder = tmp_path_factory.mktemp("foreign-adapter")
    adapted.save_pretrained(folder)
    return folder


def test_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(start("--device", "cuda"), "no CUDA GPU is available")


def test_missing_model_folder():
    assert_one_line_error(start("--model", "/nonexistent/model"), "'/nonexistent/model' does not exist")


def test_unreadable_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("this is not json")
    assert_one_line_error(start("--model", str(tmp_path)), "cannot load model")


def test_missing_adapter_folder():
    assert_one_line_error(start("--adapter", "./no-such-adapter"), "adapter folder './no-such-adapter' does not exist")


def test_adapter_for_another_base(foreign_adapter):
    assert_one_line_error(start("--adapter", str(foreign_adapter)), "was made for another base model")


def test_invalid_flag_value():
    assert_one_line_error(start("--max-running", "lots"), "max_running", status=2)


def test_unknown_quantization():
    assert_one_line_error(start("--quantization", "int3"), "quantization", status=2)


def test_quantizing_an_unmerged_adapter(foreign_adapter):
    assert_one_line_error(
        start("--adapter", str(foreign_adapter), "--no-merge", "--quantization", "int8"), "drop --no-merge"
    )


def test_an_int4_group_size_the_kernels_do_not_take():
    assert_one_line_error(start("--quantization", "int4", "--int4-group-size", "100"), "unknown int4 group size 100")


def test_fp8_weights_where_there_are_no_fp8_products():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(
        start("--quantization", "fp8"), "fp8 products (Ada, Hopper, Blackwell), not cpu: use --quantization none, int8"
    )


def test_unknown_kv_cache_dtype():
    assert_one_line_error(start("--kv-cache-dtype", "int4"), "kv_cache_dtype", status=2)
