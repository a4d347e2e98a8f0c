"""How the KV cache stores keys and values (`--kv-cache-dtype`): in the model's dtype, or in 8 bits.

8-bit storage: each key or value vector (one token, one key/value head: `head dim` numbers) is stored as 8-bit
codes (int8, or float8 e4m3) times a power-of-two scale of its own, the scale's exponent stored as a ninth byte
after the codes: a stored vector is `head dim + 1` bytes, `[..., head dim + 1]` uint8. Why a scale per vector:
a token's stored bytes then depend on nothing but that token, so the same chat gives the same cache whether it
was prefilled at once, in chunks, next to other rows or taken from the prefix cache (seeded output stays
reproducible), and no calibration pass is needed. Why a power of two: dividing by it is exact, so encoding an
already decoded vector gives it back unchanged: the prefill's cache (kept in the model's dtype, holding decoded
values) joins the 8-bit batch cache without a second rounding. int8 uses 64-127 of its codes, float8 loses
nothing to it (its own exponent absorbs the scale).

Everywhere a key or value is read it holds these decoded values, the prompt's own attention during prefill
included (`RoundTripCache`), so what the model sees does not depend on where the cache was.
"""

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV_CACHE_DTYPES = ("auto", "int8", "fp8")

# The largest magnitude each code type holds.
_CODE_LIMITS = {"int8": 127.0, "fp8": 448.0}
_CODE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


@dataclass(frozen=True)
class KvFormat:
    """`kind`: one of KV_CACHE_DTYPES; `dtype`: the model's (what attention computes in, and `auto` stores)."""

    kind: str
    dtype: torch.dtype

    @property
    def quantized(self) -> bool:
        return self.kind != "auto"

    @property
    def storage_dtype(self) -> torch.dtype:
        return torch.uint8 if self.quantized else self.dtype

    def stored_width(self, head_dim: int) -> int:
        """Elements one stored vector takes (the last dimension of the cache's tensors)."""
        return head_dim + 1 if self.quantized else head_dim

    def bytes_per_token(self, config: Any) -> int:
        """Bytes of cache one token takes: keys and values of every layer (a model config of transformers)."""
        heads, head_dim = kv_heads_and_dim(config)
        return 2 * config.num_hidden_layers * heads * self.stored_width(head_dim) * self.storage_dtype.itemsize

    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors [..., head dim] as stored: [..., stored width] (unchanged, not copied, in the model's dtype)."""
        if not self.quantized:
            return vectors.to(self.dtype)
        limit = _CODE_LIMITS[self.kind]
        full = vectors.float()
        # The smallest power of two with amax / scale <= limit: frexp is exact, where log2 may round.
        mantissa, exponent = torch.frexp(full.abs().amax(-1, keepdim=True) / limit)
        exponent = (exponent - (mantissa == 0.5).int()).clamp(-126, 127)
        scaled = (full * torch.exp2(-exponent.float())).clamp(-limit, limit)
        codes = scaled.round().to(torch.int8) if self.kind == "int8" else scaled.to(torch.float8_e4m3fn)
        return torch.cat((codes.view(torch.uint8), exponent.to(torch.int8).view(torch.uint8)), dim=-1)

    def decode(self, stored: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Stored vectors back as [..., head dim] in the model's dtype (the same tensor when not quantized), into
        `out` when given (a buffer reused across layers: a fresh one per read costs more than the decoding)."""
        if not self.quantized:
            return stored
        codes = stored[..., :-1].view(_CODE_DTYPES[self.kind])
        scales = torch.exp2(stored[..., -1:].view(torch.int8).to(self.dtype))
        if out is None:
            return codes.to(self.dtype) * scales
        return out.copy_(codes).mul_(scales)

    def round_trip(self, vectors: torch.Tensor) -> torch.Tensor:
        """What reading `vectors` back from the cache gives."""
        return self.decode(self.encode(vectors)) if self.quantized else vectors

    def new_cache(self, config: Any) -> DynamicCache:
        """A prefill's cache: the model's dtype, holding what the 8-bit cache would give back."""
        return RoundTripCache(self, config=config) if self.quantized else DynamicCache(config=config)

    def decoded_cache(self, stored: DynamicCache, config: Any) -> DynamicCache:
        """A prefill's cache (see `new_cache`) holding a stored cache's positions (a prefix cache entry)."""
        if not self.quantized:
            return stored
        cache = RoundTripCache(self, config=config)
        for layer, (keys, values) in enumerate(zip(*layer_tensors(stored), strict=True)):
            # Decoded values are already what the cache gives back: held as they are, not rounded again.
            DynamicCache.update(cache, self.decode(keys), self.decode(values), layer)
        return cache


class RoundTripCache(DynamicCache):
    """A DynamicCache whose new keys and values are rounded as the 8-bit cache stores them before anything reads
    them: the prompt's own attention sees what later steps will see."""

    def __init__(self, kv_format: KvFormat, *, config: Any = None) -> None:
        super().__init__(config=config)
        self._format = kv_format

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._format.round_trip(key_states), self._format.round_trip(value_states)
        return super().update(keys, values, layer_idx, *args, **kwargs)


def kv_heads_and_dim(config: Any) -> tuple[int, int]:
    """A model config's key/value heads and their dimension (transformers' attributes, with their defaults)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_tensors(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A prefilled cache's keys and values, per layer ([1, kv heads, length, head dim] each)."""
    keys, values = [], []
    for layer in cache.layers:
        if isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None:
            keys.append(layer.keys)
            values.append(layer.values)
    return keys, values
