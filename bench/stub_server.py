"""The real server with a model whose forward costs nothing: every forward returns the same logits, whose top
token is an ordinary word, so the engine, the sampling chain, detokenizing, stop scanning, SSE and HTTP all run
for real around it. Run as `python -m bench.stub_server [server flags]` (for bench/frontend.py): the engine's
process imports this module too (multiprocessing's spawn runs the main module again), where the patches apply.
"""

import sys

import torch

from server import cli
from server.engine.forward.runner import ModelRunner

_logits: dict[int, torch.Tensor] = {}


def _fixed_logits(runner: ModelRunner, rows: int) -> torch.Tensor:
    vocab = runner.model.get_output_embeddings().weight.shape[0]
    if vocab not in _logits:
        logits = torch.zeros(vocab)
        logits[runner.model.config.bos_token_id or 0] = -100.0
        logits[WORD_ID] = 10.0  # greedy picks it every time
        _logits[vocab] = logits
    return _logits[vocab].expand(rows, -1).contiguous()  # a fresh tensor, as a forward returns


def _prefill_chunk(runner: ModelRunner, sample_id: str, budget: int) -> torch.Tensor | None:
    pending = runner._pending[sample_id]
    pending.done = len(pending.token_ids)
    del runner._pending[sample_id]
    runner._batch.join(sample_id, _empty_cache(runner))
    return _fixed_logits(runner, 1)[0]


def _empty_cache(runner: ModelRunner) -> object:
    from transformers import DynamicCache

    config = runner.model.config
    cache = DynamicCache(config=config)
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for layer in range(config.num_hidden_layers):
        cache.update(torch.zeros(1, heads, 1, head_dim), torch.zeros(1, heads, 1, head_dim), layer)
    return cache


def _decode(runner: ModelRunner, steps: list) -> torch.Tensor:
    return _fixed_logits(runner, len(steps))


def _truncate(runner: ModelRunner, sample_id: str, length: int) -> None:
    """Nothing to truncate: the stub keeps no real cache."""


WORD_ID = 260  # a plain word piece of the embedded model's vocabulary (see bench/frontend.py)

ModelRunner.prefill_chunk = _prefill_chunk
ModelRunner.decode = _decode
ModelRunner.truncate = _truncate

if __name__ == "__main__":
    sys.exit(cli.main())
