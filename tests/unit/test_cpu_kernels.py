"""The engine's CPU kernels compute what transformers' operators compute: the decode attention writes the keys
transformers' rotary embedding makes (bit for bit) and attends as SDPA does, a prompt chunk's attention is SDPA's
under the chunk's causal mask; the norm and the activation match
Llama's modules; the products on weight panels are the linear layers'; and the engine's decode step on them
gives the logits of the step without them."""

import copy
import fcntl
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from server.engine.forward.cpu_kernels import _build_folder, load_cpu_kernels
from server.engine.forward.fused_layers import StackedAttention, StackedMLP
from server.engine.forward.kernel_norm import KernelRMSNorm
from server.engine.forward.packed_linear import PackedLinear
from server.engine.forward.panel_linear import PanelLinear
from server.engine.forward.runner import ModelRunner
from server.engine.options import default_cache_dir
from tests.toy import llama_with_head_dim_64, prefill

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernels")

TOLERANCE = {torch.float32: {"atol": 2e-5, "rtol": 1e-4}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert load_cpu_kernels(default_cache_dir())


def rotary(dim: int, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' cos and sin for `positions`: [rows, dim] each."""
    config = LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, max_position_embeddings=4096)
    embedding = LlamaRotaryEmbedding(config)
    cos, sin = embedding(torch.zeros(1, dtype=dtype), positions[:, None])
    return cos[:, 0], sin[:, 0]


def reference(qkv, cos, sin, keys, values, positions, heads, scale):
    """Rotary embedding, cache write and attention with transformers' and torch's operators."""
    rows, kv_heads, dim = qkv.shape[0], keys.shape[1], keys.shape[3]
    query, key, value = qkv.view(rows, -1, dim).split([heads, kv_heads, kv_heads], dim=1)
    query, key = apply_rotary_pos_emb(query[:, :, None], key[:, :, None], cos[:, None], sin[:, None], unsqueeze_dim=1)
    slots = torch.arange(rows)
    keys[slots, :, positions] = key[:, :, 0]
    values[slots, :, positions] = value
    visible = torch.arange(keys.shape[2]) <= positions[:, None]
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim)
    output = torch.nn.functional.scaled_dot_product_attention(
        grouped, keys[:rows], values[:rows], attn_mask=visible[:, None, None, :], scale=scale
    )
    return output.reshape(rows, heads * dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("dim", "heads", "kv_heads"), [(64, 9, 3), (128, 8, 2)])
def test_decode_attention_writes_transformers_keys_and_attends_as_sdpa(dtype, dim, heads, kv_heads):
    torch.manual_seed(0)
    # Rows that see 1 key, fewer than 8, one chunk's worth and several chunks (the kernel's chunk is 256).
    positions = torch.tensor([0, 5, 255, 700])
    rows, capacity, width = len(positions), 6, 768
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim).to(dtype)
    keys, values = (torch.randn(capacity, kv_heads, width, dim).to(dtype) for _ in range(2))
    cos, sin = rotary(dim, positions, dtype)
    scale = dim**-0.5
    expected_keys, expected_values = keys.clone(), values.clone()
    expected = reference(qkv, cos, sin, expected_keys, expected_values, positions, heads, scale)

    got = torch.ops.rpserve_cpu.decode_attention(qkv, cos, sin, keys, values, positions, heads, scale)

    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)  # nothing else touched
    torch.testing.assert_close(got, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("dim", "heads", "kv_heads"), [(64, 9, 3), (128, 8, 2)])
# Chunks of 1 position, fewer than a tile's 6, several query and key blocks (32 and 128); after no past, after a
# past inside one key block, and after one across several.
@pytest.mark.parametrize(("chunk", "past"), [(1, 0), (5, 0), (37, 0), (100, 33), (300, 700), (1, 2000)])
def test_chunk_attention_is_sdpa_with_the_chunks_causal_mask(dtype, dim, heads, kv_heads, chunk, past):
    torch.manual_seed(0)
    # The query as the rotary embedding leaves it: [1, heads, chunk, dim] over memory laid out [chunk, heads, dim].
    query = torch.randn(1, chunk, heads, dim).to(dtype).transpose(1, 2)
    keys, values = (torch.randn(1, kv_heads, past + chunk, dim).to(dtype) for _ in range(2))
    seen = torch.ones(chunk, past + chunk, dtype=torch.bool).tril_(past)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query.float(), keys.float(), values.float(), attn_mask=seen, scale=dim**-0.5, enable_gqa=True
    )

    got = torch.ops.rpserve_cpu.chunk_attention(query, keys, values, dim**-0.5)

    assert got.dtype == dtype and got.shape == (chunk, heads * dim)
    torch.testing.assert_close(got.float(), expected.transpose(1, 2).reshape(chunk, heads * dim), **TOLERANCE[dtype])


def test_chunk_attention_refuses_what_it_does_not_compute():
    keys = torch.zeros(1, 2, 10, 64)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        torch.ops.rpserve_cpu.chunk_attention(
            torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 10, 8), torch.zeros(1, 2, 10, 8), 1.0
        )
    with pytest.raises(RuntimeError, match="contiguous keys"):
        torch.ops.rpserve_cpu.chunk_attention(torch.zeros(1, 4, 3, 64), keys.transpose(2, 3), keys, 1.0)
    with pytest.raises(RuntimeError, match="the chunk's own keys"):
        torch.ops.rpserve_cpu.chunk_attention(torch.zeros(1, 4, 12, 64), keys, keys, 1.0)
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.rpserve_cpu.chunk_attention(torch.zeros(1, 4, 3, 64, dtype=torch.bfloat16), keys, keys, 1.0)


def test_decode_attention_refuses_a_position_past_the_bucket():
    qkv = torch.randn(1, (2 + 2) * 64)
    keys, values = torch.zeros(1, 1, 16, 64), torch.zeros(1, 1, 16, 64)
    cos, sin = rotary(64, torch.tensor([16]), torch.float32)
    with pytest.raises(RuntimeError, match="beyond the bucket's width"):
        torch.ops.rpserve_cpu.decode_attention(qkv, cos, sin, keys, values, torch.tensor([16]), 2, 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_llamas(dtype):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).to(dtype)
    torch.nn.init.normal_(norm.weight)
    hidden = (torch.randn(3, 7, 576) * 4).to(dtype)
    torch.testing.assert_close(KernelRMSNorm(norm)(hidden), norm(hidden), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_is_the_activation_times_up(dtype):
    torch.manual_seed(0)
    stacked = (torch.randn(5, 2 * 1536) * 6).to(dtype)  # gates far into both tails of SiLU
    gate, up = stacked.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(torch.ops.rpserve_cpu.silu_mul(stacked), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_panel_products_are_the_linear_layers(dtype):
    """Rows 1 to 7 (a decode step: whole tiles of 6 and the rest) and 100 (groups of 48 rows, a partial one)."""
    torch.manual_seed(0)
    linears = [torch.nn.Linear(200, 48, bias=False).to(dtype), torch.nn.Linear(200, 32, bias=False).to(dtype)]
    stacked = PanelLinear.stacked(linears)
    for rows in (1, 2, 5, 6, 7, 100):
        hidden = torch.randn(1, rows, 200).to(dtype)
        expected = torch.cat([linear(hidden) for linear in linears], dim=-1)
        output = stacked(hidden)
        assert output.shape == (1, rows, 80) and output.dtype == dtype
        torch.testing.assert_close(output, expected, **TOLERANCE[dtype])
        # A row's result does not depend on the rows computed with it.
        assert torch.equal(stacked(hidden[:, -1:]), output[:, -1:])


def test_panel_products_refuse_what_they_do_not_compute():
    panels = torch.zeros(2, 8, 16)
    with pytest.raises(RuntimeError, match="input width"):
        torch.ops.rpserve_cpu.panel_linear(torch.zeros(1, 9), panels)
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.rpserve_cpu.panel_linear(torch.zeros(1, 8, dtype=torch.bfloat16), panels)


@torch.inference_mode()
def test_the_engines_decode_on_the_kernels_gives_the_logits_without_them():
    model = llama_with_head_dim_64()
    without = ModelRunner(copy.deepcopy(model), torch.device("cpu"), prefix_budget_tokens=0, kernel_cache=None)
    on_kernels = ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0)
    assert all(layer.self_attn.decode_kernel for layer in model.model.layers)
    assert all(layer.mlp.silu_kernel for layer in model.model.layers)
    assert isinstance(model.model.norm, KernelRMSNorm)
    products = [module for module in model.modules() if isinstance(module, PanelLinear | PackedLinear)]
    assert len(products) == 4 * model.config.num_hidden_layers + 1  # qkv, o, gate/up, down; the LM head
    assert all(isinstance(product, PanelLinear) for product in products)
    torch.manual_seed(1)
    # Three chats of different lengths, one past a chunk of 256 keys: rows of unequal length in one bucket.
    prompts = {name: torch.randint(1, 96, (length,)).tolist() for name, length in (("a", 9), ("b", 300), ("c", 40))}
    tokens = {}
    for name, prompt in prompts.items():
        expected = prefill(without, name, prompt)
        tokens[name] = int(expected.argmax())
        torch.testing.assert_close(prefill(on_kernels, name, prompt), expected, atol=1e-4, rtol=1e-4)
    for _ in range(6):
        expected = without.decode(list(tokens.items()))
        torch.testing.assert_close(on_kernels.decode(list(tokens.items())), expected, atol=1e-4, rtol=1e-4)
        tokens = dict(zip(tokens, expected.argmax(-1).tolist(), strict=True))


def test_layers_keep_transformers_operators_without_the_kernels():
    model = llama_with_head_dim_64()
    ModelRunner(model, torch.device("cpu"), prefix_budget_tokens=0, kernel_cache=None)
    assert all(isinstance(layer.self_attn, StackedAttention) for layer in model.model.layers)
    assert not any(layer.self_attn.decode_kernel for layer in model.model.layers)
    assert not any(isinstance(layer.mlp, StackedMLP) and layer.mlp.silu_kernel for layer in model.model.layers)
    assert not any(isinstance(module, KernelRMSNorm | PanelLinear) for module in model.modules())


def test_a_lock_left_by_a_killed_build_does_not_stop_the_next_start():
    """torch's build lock is a file, which a build killed half-way leaves behind; torch would then wait forever."""
    folder = _build_folder(default_cache_dir())
    with (folder / "build.flock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # no build of another process may be running while the lock is planted
        (folder / "lock").touch()
    load = "from server.engine.forward.cpu_kernels import load_cpu_kernels as k; from server.engine.options import"
    load += " default_cache_dir as d; print(k(d()))"
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
    assert not (folder / "lock").exists()
