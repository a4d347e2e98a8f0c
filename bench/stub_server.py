"""The real server with a model whose forward costs nothing: every forward returns the same logits, whose top
token is an ordinary word, so the engine, the sampling chain, detokenizing, stop scanning, SSE and HTTP all run
for real around it. The engine thread's time is split into the (stubbed) forwards, the sampling chain and the
rest, readable at `GET /stub/timings`. Run as `python -m bench.stub_server [server flags]` (for bench/frontend.py).
"""

import sys
import time

import torch
from fastapi import FastAPI

from sampling import Sampler
from server import app as app_module
from server import cli
from server.engine.engine import Engine
from server.engine.runner import ModelRunner

TIMINGS = {"steps": 0, "step_seconds": 0.0, "forward_seconds": 0.0, "sampling_seconds": 0.0}
_logits: dict[int, torch.Tensor] = {}


def _fixed_logits(runner: ModelRunner, rows: int) -> torch.Tensor:
    vocab = runner._model.get_output_embeddings().weight.shape[0]
    if vocab not in _logits:
        logits = torch.zeros(vocab)
        logits[runner._model.config.bos_token_id or 0] = -100.0
        logits[WORD_ID] = 10.0  # greedy picks it every time
        _logits[vocab] = logits
    return _logits[vocab].expand(rows, -1).contiguous()  # a fresh tensor, as a forward returns


def _prefill_chunk(runner: ModelRunner, sequence_id: str, budget: int) -> torch.Tensor | None:
    started = time.perf_counter()
    pending = runner._pending[sequence_id]
    pending.done = len(pending.token_ids)
    del runner._pending[sequence_id]
    runner._batch.join(sequence_id, _empty_cache(runner))
    TIMINGS["forward_seconds"] += time.perf_counter() - started
    return _fixed_logits(runner, 1)[0]


def _empty_cache(runner: ModelRunner) -> object:
    from transformers import DynamicCache

    config = runner._model.config
    cache = DynamicCache(config=config)
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for layer in range(config.num_hidden_layers):
        cache.update(torch.zeros(1, heads, 1, head_dim), torch.zeros(1, heads, 1, head_dim), layer)
    return cache


def _decode(runner: ModelRunner, steps: list) -> torch.Tensor:
    started = time.perf_counter()
    logits = _fixed_logits(runner, len(steps))
    TIMINGS["forward_seconds"] += time.perf_counter() - started
    return logits


def _crop(runner: ModelRunner, sequence_id: str, length: int) -> None:
    """Nothing to crop: the stub keeps no real cache."""


def _sample(sampler: Sampler, *args: object, **kwargs: object) -> list:
    started = time.perf_counter()
    try:
        return original_sample(sampler, *args, **kwargs)
    finally:
        TIMINGS["sampling_seconds"] += time.perf_counter() - started


def _step(engine: Engine) -> None:
    started = time.perf_counter()
    original_step(engine)
    TIMINGS["steps"] += 1
    TIMINGS["step_seconds"] += time.perf_counter() - started


def _create_app(*args: object, **kwargs: object) -> FastAPI:
    app = original_create_app(*args, **kwargs)

    @app.get("/stub/timings")
    async def timings() -> dict:
        return dict(TIMINGS)

    return app


WORD_ID = 260  # a plain word piece of the embedded model's vocabulary (see bench/frontend.py)

ModelRunner.prefill_chunk = _prefill_chunk
ModelRunner.decode = _decode
ModelRunner.crop = _crop
original_sample, Sampler.sample = Sampler.sample, _sample
original_step, Engine._step = Engine._step, _step
original_create_app, app_module.create_app = app_module.create_app, _create_app
cli.create_app = _create_app

if __name__ == "__main__":
    sys.exit(cli.main())
