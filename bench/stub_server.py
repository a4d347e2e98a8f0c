"""The real server with a model whose forward costs nothing: every forward returns the same logits, whose top
token is an ordinary word, so the engine, the sampling chain, detokenizing, stop scanning, SSE and HTTP all run
for real around it. Run as `python -m bench.stub_server [server flags]` (for bench/frontend.py).

The stub enters where the engine process loads its model (`server.engine.child.load`, the one function the engine
gets its model from): the engine process imports this module too (multiprocessing's spawn runs the main module
again), so the replacement applies there.
"""

import sys
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedConfig

from server import cli
from server.engine import child
from server.engine.model.loader import LoadedModel, load
from server.engine.options import ModelSpec

WORD_ID = 260  # a plain word piece of the embedded model's vocabulary (see bench/frontend.py)


class StubModel(torch.nn.Module):
    """The real model's configuration with a forward that costs nothing: fixed logits, greedy picks WORD_ID. A
    prefill writes zeros into its cache for the chunk's positions, as the real one writes keys and values."""

    def __init__(self, config: PreTrainedConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.dtype = torch.float32
        self._logits = torch.zeros(vocab_size)
        self._logits[config.bos_token_id or 0] = -100.0
        self._logits[WORD_ID] = 10.0
        heads = config.num_key_value_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._heads = heads

    def set_attn_implementation(self, name: str) -> None:
        """The engine's attention is never called: nothing to switch."""

    def forward(self, input_ids: torch.Tensor, cache: DynamicCache | None = None, **_: Any) -> Any:
        rows, length = input_ids.shape
        if cache is not None:  # a prefill chunk
            empty = torch.zeros(1, self._heads, length, self._head_dim)
            for layer in range(self.config.num_hidden_layers):
                cache.update(empty, empty, layer)
        # A fresh tensor, as a forward returns.
        return _Output(self._logits.expand(rows, 1, -1).contiguous())


class _Output:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


def load_stub(spec: ModelSpec) -> LoadedModel:
    """The real model's vocabulary and configuration around the stub forward."""
    real = load(spec)
    vocab_size = real.model.get_output_embeddings().weight.shape[0]
    stub = StubModel(real.model.config, vocab_size)
    # The engine uses of a model only what the stub has: its configuration and its forward.
    return LoadedModel(stub, real.vocabulary, real.name, real.device, torch.float32, real.context_length)


child.load = load_stub

if __name__ == "__main__":
    sys.exit(cli.main())
