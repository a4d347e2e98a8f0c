"""transformers' SDPA attention, with one CPU decode case routed to a faster kernel call.

A decode step (one query token) of a single unpadded sequence reaches SDPA without a mask, and transformers then
asks torch for grouped-query attention (`enable_gqa`). On CPU that kernel is several times slower in bf16 than
the same attention with the query heads grouped under their key/value head (measured in bench/RESULTS.md).
Batches with padding already get the grouped form, as does every other case.
"""

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "rpserve_sdpa"


def sdpa_with_grouped_cpu_decode(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, query_length, head_dim = query.shape
    if query.device.type != "cpu" or attention_mask is not None or query_length != 1 or groups == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # [batch, kv heads, groups, head dim]: each key/value head attends for its group of query heads at once.
    grouped = query.reshape(batch, heads // groups, groups, head_dim)
    output = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, scale=kwargs.get("scaling"))
    return output.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def use_grouped_cpu_decode(model: PreTrainedModel) -> None:
    """Switches a model that runs SDPA attention to this variant (same masks)."""
    if model.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(NAME, sdpa_with_grouped_cpu_decode)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
