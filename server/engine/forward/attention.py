"""The engine's attention: transformers' SDPA, with the decode step over width buckets done bucket by bucket, and
two CPU cases routed to faster kernel calls.

A decode step of the bucketed batch cache (server/engine/kv/bucket_cache.py) writes its keys and values into the
buckets and attends each bucket's rows to that bucket's keys, through the step's layout (kv/step_layout.py).
Otherwise, on the CPU: a prompt chunk after cached positions of its own sequence (every chunk of a prefill but the
first) attends to those positions without a mask and to itself causally, two flash-attention calls merged by their
log-sum-exps (`attention_after_past`): the masked call computed the chunk against every position, the half of its
own block that the mask hides included, and added the mask to every score. With grouped-query attention: one
query token of a single unpadded sequence (no mask) runs with the query heads grouped under their key/value head,
as torch's `enable_gqa` kernel is several times slower there in bf16; any other masked call runs with
`enable_gqa`, where transformers would first copy every key/value head once per query head of its group (all
measured in bench/RESULTS.md). Every other case is transformers' SDPA.
"""

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from server.engine.kv.step_layout import StepLayout

NAME = "rpserve_sdpa"
# The attribute of a CPU mask made here that says it is a chunk's causal mask after that many cached positions.
CAUSAL_PAST = "rpserve_causal_past"


def sdpa_grouped_on_cpu(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, query_length, head_dim = query.shape
    scale = kwargs.get("scaling")
    past = getattr(attention_mask, CAUSAL_PAST, None)
    if query.device.type == "cpu" and past is not None and key.shape[-2] == past + query_length:
        return attention_after_past(query, key, value, past, scale).transpose(1, 2).contiguous(), None
    if query.device.type != "cpu" or groups == 1 or (attention_mask is None and query_length > 1):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]  # as transformers cuts a mask made for a longer cache
        output = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=scale, enable_gqa=True
        )
        return output.transpose(1, 2).contiguous(), None
    # [batch, kv heads, groups, head dim]: each key/value head attends for its group of query heads at once.
    grouped = query.reshape(batch, heads // groups, groups, head_dim)
    output = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, scale=scale)
    return output.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def attention_after_past(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past: int, scale: float | None
) -> torch.Tensor:
    """SDPA of a chunk of one sequence [1, heads, chunk, head dim] over its keys and values [1, kv heads, past +
    chunk, head dim], each query seeing every past position and its own chunk up to itself: the two parts
    separately (the past without a mask, the chunk causal, torch's CPU flash kernel grouping query heads itself),
    then merged as one softmax would weigh them, by the log-sum-exp of each part's scores."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    seen, seen_lse = flash(query, key[:, :, :past], value[:, :, :past], 0.0, False, scale=scale)
    own, own_lse = flash(query, key[:, :, past:], value[:, :, past:], 0.0, True, scale=scale)
    total = torch.logaddexp(seen_lse, own_lse)
    seen_weight = (seen_lse - total).exp_().unsqueeze(-1)
    own_weight = (own_lse - total).exp_().unsqueeze(-1)
    return (seen.float() * seen_weight + own.float() * own_weight).to(query.dtype)


def causal_past(mask: torch.Tensor) -> int | None:
    """How many positions a chunk of one sequence sees before its own when `mask` (boolean, [1, 1, chunk,
    positions]) is exactly that: every earlier position, then its own chunk causally; None for any other mask."""
    chunk, positions = mask.shape[-2:]
    past = positions - chunk
    if mask.shape[0] != 1 or past <= 0:
        return None
    expected = torch.ones(chunk, positions, dtype=torch.bool, device=mask.device).tril_(past)
    return past if torch.equal(mask[0, 0], expected) else None


def bucket_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    bucket_layout: StepLayout | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A decode step over the width buckets: `key` and `value` (this step's) are written into the buckets, then
    each bucket's rows attend to their own keys up to the bucket's longest row, query heads grouped under their
    key/value head. Anything else (a prefill) is SDPA as above."""
    if bucket_layout is None:
        return sdpa_grouped_on_cpu(module, query, key, value, attention_mask, **kwargs)
    layer = int(getattr(module, "layer_idx"))  # noqa: B009  (an attribute of transformers' attention modules only)
    bucket_layout.write(layer, key, value)
    groups = getattr(module, "num_key_value_groups", 1)
    _, heads, _, head_dim = query.shape
    outputs = []
    for start, keys, values, mask in bucket_layout.groups(layer):
        count = keys.shape[0]
        grouped = query[start : start + count].reshape(count, heads // groups, groups, head_dim)
        output = torch.nn.functional.scaled_dot_product_attention(
            grouped, keys, values, attn_mask=mask, scale=kwargs.get("scaling")
        )
        outputs.append(output.reshape(count, heads, 1, head_dim))
    return torch.cat(outputs).transpose(1, 2).contiguous(), None


def additive_sdpa_mask(*args: Any, dtype: torch.dtype = torch.float32, **kwargs: Any) -> torch.Tensor | None:
    """transformers' SDPA mask, on the CPU as the additive mask (0 where a position is seen, -inf elsewhere) that
    SDPA's CPU kernel makes of a boolean one itself, in every layer: made once a forward instead. A 512-token
    prefill chunk at 2k tokens of context spent about 5 % of its time converting masks (bench/RESULTS.md)."""
    mask = sdpa_mask(*args, **kwargs)
    if mask is None or mask.dtype != torch.bool or mask.device.type != "cpu":
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype).masked_fill_(mask.logical_not(), float("-inf"))
    # Checked once a forward, read by every layer's attention (the mask object reaches each layer as it is).
    setattr(additive, CAUSAL_PAST, causal_past(mask))
    return additive


def use_engine_attention(model: PreTrainedModel) -> None:
    """Switches a model that runs SDPA attention to the engine's (the same masks for everything else)."""
    if model.config._attn_implementation not in ("sdpa", NAME):
        return
    AttentionInterface.register(NAME, bucket_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, additive_sdpa_mask)
    model.set_attn_implementation(NAME)
