"""The CPU forward the engine runs (stacked projections; products on the kernels' panels or on oneDNN-packed
weights) computes what the model as loaded computes, and leaves alone what it must not change."""

import copy

import peft
import pytest
import torch

from server.engine.forward.fused_layers import StackedAttention, StackedMLP
from server.engine.forward.packed_linear import PackedLinear, can_pack
from server.engine.forward.panel_linear import PanelLinear
from server.engine.forward.runner import ModelRunner
from server.engine.options import default_cache_dir
from tests.toy import prefill, tiny_llama

pytestmark = pytest.mark.skipif(not can_pack(torch.float32), reason="this torch has no oneDNN")


def greedy_logits(runner: ModelRunner, prompt: list[int], steps: int) -> list[torch.Tensor]:
    logits = [prefill(runner, "x", prompt)]
    for _ in range(steps):
        logits.append(runner.decode([("x", int(logits[-1].argmax()))])[0])
    return logits


@torch.inference_mode()
def test_packed_forward_gives_the_logits_of_the_plain_one():
    model = tiny_llama()
    plain = ModelRunner(copy.deepcopy(model), torch.device("cpu"), prefix_budget_tokens=0, packed_weights=False)
    packed = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, packed_weights=True)
    prompt = [5, 17, 3, 42, 9, 9, 31]
    for expected, got in zip(greedy_logits(plain, prompt, 6), greedy_logits(packed, prompt, 6), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("kernel_cache", "product"), [(default_cache_dir(), PanelLinear), (None, PackedLinear)])
def test_every_projection_is_stacked_and_on_the_kernels_panels_or_packed(kernel_cache, product):
    """With the CPU kernels every product runs on their weight panels; without them on oneDNN's packed weights."""
    model = tiny_llama()
    ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, kernel_cache=kernel_cache)
    for layer in model.model.layers:
        assert isinstance(layer.self_attn, StackedAttention) and isinstance(layer.mlp, StackedMLP)
        assert layer.self_attn.qkv_proj.out_features == 32 + 2 * 16  # 4 query heads, 2 key/value heads of 8
        assert isinstance(layer.self_attn.qkv_proj, product) and isinstance(layer.mlp.gate_up_proj, product)
        assert isinstance(layer.self_attn.o_proj, product) and isinstance(layer.mlp.down_proj, product)
    assert isinstance(model.lm_head, product)
    assert not any(type(module) is torch.nn.Linear for module in model.modules())


@torch.inference_mode()
def test_an_unmerged_adapter_keeps_its_layers_and_its_effect():
    base = tiny_llama()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    adapted = peft.get_peft_model(base, config)
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # a LoRA starts as a no-op: give it an effect to keep
    ids = torch.tensor([[5, 17, 3, 42, 9]])
    expected = adapted(input_ids=ids).logits
    ModelRunner(adapted, torch.device("cpu"), prefix_budget_tokens=0)
    assert not any(
        isinstance(module, StackedAttention | StackedMLP | PackedLinear | PanelLinear) for module in adapted.modules()
    )
    torch.testing.assert_close(adapted(input_ids=ids).logits, expected)
