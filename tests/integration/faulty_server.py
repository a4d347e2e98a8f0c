"""The real server with faults injected into the requests whose prompt names one, to prove that a fault stays
with its request. Run as `python -m tests.integration.faulty_server [server flags]`: the engine's process imports
this module too (multiprocessing's spawn runs the main module again), so the patches apply on both sides.

A prompt containing `FAULT:<kind>` gets, from its third generated token on:
- `nan`: NaN logits from the model for its row;
- `sampler`: an exception from the sampler whenever its row is sampled;
- `oom`: an out-of-memory error from every batched decode forward that includes it;
and `FAULT:prefill-oom` makes its prefill run out of memory, `FAULT:unexpected` makes submitting it raise (a bug
no handler expects). A mixed step (decode rows and prompt chunks in one forward) that includes a faulty request
fails, so that the engine runs its parts apart, where the faults above are injected: the fall-back is part of
every fault's path.
"""

import re
import sys

import torch

from sampling.sampler import Sampler
from server import cli
from server.engine.client import EngineClient
from server.engine.engine import Engine
from server.engine.forward.runner import ModelRunner

FAULT = re.compile(r"FAULT:([a-z-]+)")
FAULT_AFTER_TOKENS = 2

faulty: dict[str, str] = {}  # sample id -> kind of fault
generated: dict[str, int] = {}  # decode steps seen per faulty sample
sampler_prompts: set[tuple[int, ...]] = set()  # prompts of `sampler` faults
sampler_slots: dict[int, int] = {}  # sampler slot of a `sampler` fault -> times it was sampled


def _submit(engine: EngineClient, requests: list) -> list:
    """In the server's process."""
    if any("FAULT:unexpected" in engine.vocabulary.decode(request.prompt_ids) for request in requests):
        raise RuntimeError("injected: an unexpected error")
    return original_submit(engine, requests)


def _enqueue(engine: Engine, requests: list) -> None:
    """In the engine's process, as everything below."""
    for request in requests:
        found = FAULT.search(engine.vocabulary.decode(request.prompt_ids))
        if found:
            faulty[request.sample_id] = found.group(1)
            if found.group(1) == "sampler":
                sampler_prompts.add(tuple(request.prompt_ids))
    original_enqueue(engine, requests)


def _add(sampler: Sampler, history: list, params: object) -> int:
    slot = original_add(sampler, history, params)
    if tuple(history) in sampler_prompts:
        sampler_slots[slot] = 0
    return slot


def _prefill_chunk(runner: ModelRunner, sample_id: str, budget: int) -> torch.Tensor | None:
    if faulty.get(sample_id) == "prefill-oom":
        raise torch.OutOfMemoryError("injected: out of memory in prefill")
    return original_prefill_chunk(runner, sample_id, budget)


def _mixed_step(runner: ModelRunner, steps: list, chunks: list) -> tuple:
    if any(sample_id in faulty for sample_id, _ in [*steps, *chunks]):
        raise RuntimeError("injected: a mixed step with a faulty request")
    return original_mixed_step(runner, steps, chunks)


def _decode(runner: ModelRunner, steps: list) -> torch.Tensor:
    ripe = []
    for index, (sample_id, _) in enumerate(steps):
        if sample_id in faulty:
            generated[sample_id] = generated.get(sample_id, 0) + 1
            if generated[sample_id] >= FAULT_AFTER_TOKENS:
                ripe.append((index, faulty[sample_id]))
    if any(kind == "oom" for _, kind in ripe):
        # Raised inside the forward, half-way through the layers: the first half's caches have grown already.
        layers = runner.model.model.layers
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


def _sample(sampler: Sampler, logits: torch.Tensor, slots: list, bans: list | None = None) -> list:
    for slot in sampler_slots.keys() & set(slots):
        sampler_slots[slot] += 1
        if sampler_slots[slot] > FAULT_AFTER_TOKENS:
            raise RuntimeError("injected: sampler failure")
    return original_sample(sampler, logits, slots, bans)


def _remove(sampler: Sampler, slot: int) -> None:
    sampler_slots.pop(slot, None)
    original_remove(sampler, slot)


original_submit, EngineClient.submit = EngineClient.submit, _submit
original_enqueue, Engine.enqueue = Engine.enqueue, _enqueue
original_add, Sampler.add = Sampler.add, _add
original_prefill_chunk, ModelRunner.prefill_chunk = ModelRunner.prefill_chunk, _prefill_chunk
original_decode, ModelRunner.decode = ModelRunner.decode, _decode
original_mixed_step, ModelRunner.mixed_step = ModelRunner.mixed_step, _mixed_step
original_sample, Sampler.sample = Sampler.sample, _sample
original_remove, Sampler.remove = Sampler.remove, _remove

if __name__ == "__main__":
    sys.exit(cli.main())
