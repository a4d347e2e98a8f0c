"""What a CUDA graph can capture, checked on the CPU: a dispatch mode that fails on host syncs and on outputs
sized by data, and a padded decode step to run under it."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PreTrainedModel

from server.engine.forward.decode_step import DecodeStep
from server.engine.kv.bucket_cache import BucketCache
from server.engine.kv.kv_format import KvFormat


class NoHostSync(TorchDispatchMode):
    """Fails on what a CUDA graph cannot capture: reading a value back to the host, or an output whose size
    depends on the data."""

    FORBIDDEN = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item"})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in self.FORBIDDEN:
            raise AssertionError(f"{name} syncs the host or allocates by data")
        if name in ("_to_copy", "copy_") and kwargs and kwargs.get("device") is not None:
            source = args[0].device
            if torch.device(kwargs["device"]).type == "cpu" and source.type != "cpu":
                raise AssertionError(f"{name} copies from {source} to the host")
        return func(*args, **(kwargs or {}))


def padded_decode_logits(model: PreTrainedModel, kv_cache_dtype: str = "auto") -> torch.Tensor:
    """One padded decode step of two rows (prompts of 3 and 6 tokens) over the bucket cache, as the engine runs it
    (the cache storing keys and values as `kv_cache_dtype` says)."""
    device = torch.device("cpu")
    kv_format = KvFormat(kv_cache_dtype, model.dtype)
    batch_cache = BucketCache(model.config, device, kv_format, context_length=64)
    for row, prompt in enumerate(([5, 6, 7], [9, 10, 11, 12, 13, 14])):
        cache = kv_format.new_cache(model.config)
        model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
        batch_cache.join(str(row), cache)
    batch = batch_cache.advance({"0": 8, "1": 15}, padded=True)
    return DecodeStep(model, device)(batch, batch.inputs)
