"""The distribution one sequence's next token is drawn from, through the whole sampling chain: the exact values
the sampler tests compare with docs/SAMPLERS.md's definitions."""

from collections.abc import Sequence

import torch

from sampling import SamplingParams
from sampling.breakers import Tokenize
from sampling.sampler import Sampler


def probabilities(
    logits: torch.Tensor, history: Sequence[int], params: SamplingParams, *, vocab: Sequence[str], tokenize: Tokenize
) -> torch.Tensor:
    """The distribution one sequence's next token is drawn from after `history`, through the whole chain; for
    temperature 0, all the mass on the arg-max."""
    sampler = Sampler(slots=1, capacity=max(len(history), 1), vocab=vocab, tokenize=tokenize, device=logits.device)
    slot = sampler.add(history, params)
    processed = sampler.process(logits.reshape(1, -1), [slot])[0]
    if params.greedy:
        return torch.nn.functional.one_hot(processed.argmax(), processed.numel()).to(torch.float32)
    return torch.softmax(processed, dim=-1)
