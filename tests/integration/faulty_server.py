"""The real server with faults injected into the requests whose prompt names one, to prove that a fault stays
with its request. Run as `python -m tests.integration.faulty_server [server flags]`.

A prompt containing `FAULT:<kind>` gets, from its third generated token on:
- `nan`: NaN logits from the model for its row;
- `sampler`: an exception from the sampler whenever its row is sampled;
- `oom`: an out-of-memory error from every batched decode forward that includes it;
and `FAULT:prefill-oom` makes its prefill run out of memory.
"""

import re
import sys

import torch

from sampling import Sampler
from server import cli
from server.engine.engine import Engine
from server.engine.runner import ModelRunner

FAULT = re.compile(r"FAULT:([a-z-]+)")
FAULT_AFTER_TOKENS = 2

faulty: dict[str, str] = {}  # sequence id -> kind of fault
generated: dict[str, int] = {}  # decode steps seen per faulty sequence
sampler_rows: dict[int, int] = {}  # sampler row of a `sampler` fault -> times it was sampled


def _submit_samples(engine: Engine, requests: list) -> list:
    for request in requests:
        found = FAULT.search(engine.model.tokenizer.decode(request.prompt_ids))
        if found:
            faulty[request.request_id] = found.group(1)
    return original_submit(engine, requests)


def _admit(engine: Engine) -> list:
    groups = original_admit(engine)
    for group in groups:
        for sequence in group:
            if faulty.get(sequence.id) == "sampler":
                sampler_rows[sequence.row] = 0
    return groups


def _prefill_chunk(runner: ModelRunner, sequence_id: str, budget: int) -> torch.Tensor | None:
    if faulty.get(sequence_id) == "prefill-oom":
        raise torch.OutOfMemoryError("injected: out of memory in prefill")
    return original_prefill_chunk(runner, sequence_id, budget)


def _decode(runner: ModelRunner, steps: list) -> torch.Tensor:
    ripe = []
    for index, (sequence_id, _) in enumerate(steps):
        if sequence_id in faulty:
            generated[sequence_id] = generated.get(sequence_id, 0) + 1
            if generated[sequence_id] >= FAULT_AFTER_TOKENS:
                ripe.append((index, faulty[sequence_id]))
    if any(kind == "oom" for _, kind in ripe):
        # Raised inside the forward, half-way through the layers: the first half's caches have grown already.
        layers = runner._model.model.layers
        hook = layers[len(layers) // 2].register_forward_hook(_out_of_memory)
        try:
            return original_decode(runner, steps)
        finally:
            hook.remove()
    logits = original_decode(runner, steps)
    for index, kind in ripe:
        if kind == "nan":
            logits[index] = float("nan")
    return logits


def _out_of_memory(*_: object) -> None:
    raise torch.OutOfMemoryError("injected: out of memory while growing the cache")


def _sample(sampler: Sampler, logits: torch.Tensor, rows: list, bans: list | None = None) -> list:
    for row in sampler_rows.keys() & set(rows):
        sampler_rows[row] += 1
        if sampler_rows[row] > FAULT_AFTER_TOKENS:
            raise RuntimeError("injected: sampler failure")
    return original_sample(sampler, logits, rows, bans)


def _remove(sampler: Sampler, row: int) -> None:
    sampler_rows.pop(row, None)
    original_remove(sampler, row)


original_submit, Engine.submit_samples = Engine.submit_samples, _submit_samples
original_admit, Engine._admit = Engine._admit, _admit
original_prefill_chunk, ModelRunner.prefill_chunk = ModelRunner.prefill_chunk, _prefill_chunk
original_decode, ModelRunner.decode = ModelRunner.decode, _decode
original_sample, Sampler.sample = Sampler.sample, _sample
original_remove, Sampler.remove = Sampler.remove, _remove

if __name__ == "__main__":
    sys.exit(cli.main())
