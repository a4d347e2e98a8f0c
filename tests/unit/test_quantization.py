"""Weight-only int8: the rounding it makes, the load-time check's numbers and verdicts, and a padded decode step
that stays capturable (no host sync, no allocation sized by data) in every dtype and quantization."""

import math

import pytest
import torch

from server.engine.forward.int8_linear import Int8Linear, compute_dtype, quantize_linear_layers
from server.engine.forward.module_swap import decoder_layers
from server.engine.forward.quantization import QuantizationReport, _problem, agreement
from server.engine.forward.runner import ModelRunner
from server.engine.forward.self_check import captured_decode_problem
from tests.capturable import NoHostSync, padded_decode_logits
from tests.toy import tiny_llama


def test_each_weight_is_within_half_a_step_of_its_row_scale():
    """Half a step of its row's scale, plus the rounding of that scale to bfloat16 (the dtype a float32 model's
    int8 product runs in on the CPU)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 16)
    linear.weight.data[3] *= 50  # an outlier row costs only its own precision
    layer = Int8Linear(linear)
    assert layer.scales.dtype == torch.bfloat16
    steps = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    represented = layer.weight.float() * layer.scales.float()[:, None]
    error = (represented - linear.weight).abs()
    assert bool((error <= steps / 2 + linear.weight.abs() * 2**-8 + 1e-7).all())
    assert float(error[3].max()) > 10 * float(error[2].max())  # the outlier row's steps are its own
    assert layer.weight.dtype == torch.int8 and int(layer.weight.abs().max()) == 127


@torch.inference_mode()
def test_the_product_is_the_linear_layers_within_rounding():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    hidden = torch.randn(2, 5, 64)
    got = Int8Linear(linear)(hidden)
    assert got.shape == (2, 5, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, linear(hidden), atol=0.05, rtol=0.05)


def test_agreement_is_kl_and_top1():
    reference = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    other = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    mean_kl, top1 = agreement(reference, other)
    p = 1 / (1 + math.exp(-2))  # softmax of [2, 0]
    assert mean_kl == pytest.approx((p * math.log(p / (1 - p)) + (1 - p) * math.log((1 - p) / p)) / 2, rel=1e-5)
    assert top1 == 0.5  # the first row's tie is the same arg-max, the second row flips
    assert agreement(reference, reference) == (0.0, 1.0)


def test_the_check_names_what_broke():
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    good = QuantizationReport("int8", 7, 0.001, 0.99)
    assert _problem(good, logits) is None
    assert "not finite" in str(_problem(good, torch.tensor([[1.0, float("nan")]])))
    assert "equal" in str(_problem(good, torch.tensor([[1.0, 2.0], [4.0, 4.0]])))
    far = QuantizationReport("int8", 7, 0.3, 0.6)
    assert _problem(far, logits) == (
        "on the probe text, mean KL 0.3000 nats (at most 0.05) and top-1 agreement 60.0% (at least 90%)"
    )


@pytest.mark.parametrize("quantization", ["none", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.inference_mode()
def test_the_padded_decode_step_stays_capturable(dtype, quantization):
    model = tiny_llama().to(dtype)
    if quantization == "int8":
        assert quantize_linear_layers(decoder_layers(model)) == 2 * 7
    with NoHostSync():
        logits = padded_decode_logits(model)
    assert logits.shape == (2, 64) and bool(torch.isfinite(logits).all())


@torch.inference_mode()
def test_the_captured_decode_self_check_passes_on_int8():
    """At the tolerance of the dtype the int8 product computes in (bfloat16 for a float32 model on the CPU)."""
    model = tiny_llama()
    quantize_linear_layers(decoder_layers(model))
    runner = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, captured=True)
    precision = compute_dtype(torch.float32, torch.device("cpu"))
    assert precision == torch.bfloat16
    assert captured_decode_problem(runner, model.config.vocab_size, precision, context=256) is None
