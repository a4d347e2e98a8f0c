"""fp8 linear layers: e4m3 codes with a scale per weight row and per token, the kernel's output scaled after;
the start-up refusal where a device has no fp8 products; a decode step a CUDA graph could capture."""

import pytest
import torch

from server.engine.forward import fp8_linear
from server.engine.forward.fp8_linear import Fp8Linear, fp8_problem, quantize_linear_layers_fp8
from server.engine.forward.module_swap import decoder_layers
from tests.capturable import NoHostSync, padded_decode_logits
from tests.toy import tiny_llama


def linear_of(weight: list[list[float]]) -> torch.nn.Linear:
    layer = torch.nn.Linear(len(weight[0]), len(weight), bias=False)
    layer.weight.data = torch.tensor(weight)
    return layer


def test_weights_and_activations_are_scaled_per_row_then_rounded_to_e4m3():
    """Rows of 16: each row's largest magnitude becomes 448. 0.6 in a row led by -2 is 134.4, and e4m3 steps by
    16 between 128 and 256: it becomes 128, read back as 128 * 2 / 448; every other value here is exact."""
    weight = [[1.0, 0.5] + [0.0] * 14, [-2.0, 0.6] + [0.0] * 14]
    layer = Fp8Linear(linear_of(weight))
    assert layer.scales[0].tolist() == pytest.approx([1 / 448, 2 / 448])
    assert layer.weight.float()[:, :2].tolist() == [[448.0, 224.0], [-448.0, 128.0]]
    hidden = torch.tensor([[2.0, 4.0] + [0.0] * 14])
    # The activation row's 4 becomes 448 and its 2 224, both exact: 2 * 1 + 4 * 0.5, and 2 * -2 + 4 * 128 * 2 / 448.
    assert layer(hidden)[0].tolist() == pytest.approx([4.0, -4.0 + 4 * 128 * 2 / 448], rel=1e-6)


def test_a_token_does_not_depend_on_the_other_rows_of_its_batch():
    torch.manual_seed(1)
    layer = Fp8Linear(torch.nn.Linear(32, 16))
    batch = torch.cat([torch.randn(3, 32) * 100, torch.zeros(1, 32)])
    token = torch.randn(1, 32)
    assert torch.equal(layer(torch.cat([token, batch]))[:1], layer(token))


def test_the_cpu_and_a_pre_ada_gpu_are_refused_naming_what_works(monkeypatch):
    assert fp8_problem(torch.device("cpu")) == (
        "--quantization fp8 needs an NVIDIA GPU with fp8 products (Ada, Hopper, Blackwell), not cpu: use "
        "--quantization none, int8 or int4 there"
    )
    # What an RTX 3060 answers (no GPU here): only the device queries are replaced.
    monkeypatch.setattr(fp8_linear.torch.cuda, "get_device_capability", lambda device: (8, 6))
    monkeypatch.setattr(fp8_linear.torch.cuda, "get_device_name", lambda device: "NVIDIA GeForce RTX 3060")
    assert fp8_problem(torch.device("cuda", 0)) == (
        "--quantization fp8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); NVIDIA GeForce RTX "
        "3060 is 8.6: use --quantization none, int8 or int4 there"
    )
    monkeypatch.setattr(fp8_linear.torch.cuda, "get_device_capability", lambda device: (8, 9))
    assert fp8_problem(torch.device("cuda", 0)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.inference_mode()
def test_the_padded_decode_step_stays_capturable_and_close(dtype):
    model = tiny_llama().to(dtype)
    reference = padded_decode_logits(model)
    assert quantize_linear_layers_fp8(decoder_layers(model)) == 2 * 7
    with NoHostSync():
        logits = padded_decode_logits(model)
    assert logits.dtype == dtype and torch.allclose(logits.float(), reference.float(), atol=0.1)
