"""Weight-only int4 in groups: the rounding it makes, the group each layer width gets, the product against the
dequantized weight, and a padded decode step that stays capturable."""

import pytest
import torch

from server.engine.forward.int4_linear import (
    Int4Linear,
    dequantized,
    group_for,
    group_quantized,
    quantize_linear_layers_int4,
)
from server.engine.forward.module_swap import decoder_layers
from tests.capturable import NoHostSync, padded_decode_logits
from tests.toy import tiny_llama


def test_a_group_maps_its_minimum_to_0_and_its_maximum_to_15():
    weight = torch.tensor([[float(i) for i in range(32)], [(-1.0) ** i * 0.5 for i in range(32)]])
    levels, scales_and_zeros = group_quantized(weight, 32)
    assert scales_and_zeros.shape == (1, 2, 2)
    assert levels[0].tolist() == [round(i * 15 / 31) for i in range(32)]
    assert levels[1].tolist() == [15, 0] * 16  # two values: the ends of the range
    assert scales_and_zeros[0, 0].tolist() == pytest.approx([31 / 15, 31 / 15 * 8])
    assert scales_and_zeros[0, 1].tolist() == pytest.approx([1 / 15, -0.5 + 8 / 15])
    error = (dequantized(levels, scales_and_zeros) - weight).abs()
    assert float(error[0].max()) <= 31 / 15 / 2 + 1e-6 and float(error[1].max()) < 1e-6


@pytest.mark.parametrize(
    ("width", "wanted", "group"), [(576, 128, 64), (1536, 128, 128), (4096, 128, 128), (96, 64, 32), (100, 128, None)]
)
def test_each_width_gets_the_largest_group_that_divides_it(width, wanted, group):
    assert group_for(width, wanted) == group


@torch.inference_mode()
def test_the_product_is_the_dequantized_weights_within_bfloat16_rounding():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    layer = Int4Linear(linear, 64)
    levels, scales_and_zeros = group_quantized(linear.weight.float(), 64)
    hidden = torch.randn(2, 3, 256)
    expected = hidden @ dequantized(levels, scales_and_zeros).T + linear.bias
    got = layer(hidden)
    assert got.shape == (2, 3, 96) and got.dtype == torch.float32
    assert float((got - expected).abs().max()) < 0.02 * float(expected.abs().max())
    assert layer.weight.numel() == 96 * 256 // 2  # two weights a byte


@torch.inference_mode()
def test_the_padded_decode_step_stays_capturable_with_int4():
    model = tiny_llama()
    assert quantize_linear_layers_int4(decoder_layers(model), 128) == 2 * 7
    with NoHostSync():
        logits = padded_decode_logits(model)
    assert logits.shape == (2, 64) and bool(torch.isfinite(logits).all())
