"""The chain's steps that need nothing but the logits and each row's parameters, by order name. Each applies only
to the rows that use it (a request that uses none of them pays nothing for them); the sampler runs the steps that
keep state (penalties, DRY, mirostat, XTC) itself."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sampling.filters import (
    mask_epsilon,
    mask_eta,
    mask_min_p,
    mask_tail_free,
    mask_top_a,
    mask_top_k,
    mask_top_n_sigma,
    mask_top_p,
    mask_typical,
)
from sampling.params import SamplingParams
from sampling.temperature import apply_dynamic_temperature, apply_smoothing, apply_temperature


@dataclass(frozen=True)
class Step:
    uses: Callable[[SamplingParams], bool]
    apply: Callable[[torch.Tensor, list[SamplingParams]], torch.Tensor]  # the logits of the rows using it, their params


STEPS: dict[str, Step] = {
    "top_k": Step(lambda p: p.top_k > 0, lambda x, ps: mask_top_k(x, [p.top_k for p in ps])),
    "top_p": Step(lambda p: p.top_p < 1, lambda x, ps: mask_top_p(x, [p.top_p for p in ps])),
    # Min-p keeps every token of the top probability: a greedy row's pick is the same without it.
    "min_p": Step(lambda p: p.min_p > 0 and not p.greedy, lambda x, ps: mask_min_p(x, [p.min_p for p in ps])),
    "top_n_sigma": Step(lambda p: p.top_n_sigma > 0, lambda x, ps: mask_top_n_sigma(x, [p.top_n_sigma for p in ps])),
    "typical_p": Step(lambda p: p.typical_p < 1, lambda x, ps: mask_typical(x, [p.typical_p for p in ps])),
    "tfs": Step(lambda p: p.tfs < 1, lambda x, ps: mask_tail_free(x, [p.tfs for p in ps])),
    # text-generation-webui ignores larger values of these three.
    "top_a": Step(lambda p: 0 < p.top_a <= 1, lambda x, ps: mask_top_a(x, [p.top_a for p in ps])),
    "epsilon_cutoff": Step(
        lambda p: 0 < p.epsilon_cutoff < 1e4, lambda x, ps: mask_epsilon(x, [p.epsilon_cutoff for p in ps])
    ),
    "eta_cutoff": Step(lambda p: 0 < p.eta_cutoff < 1e4, lambda x, ps: mask_eta(x, [p.eta_cutoff for p in ps])),
    # Dynamic temperature replaces the plain one for the rows that use it.
    "temperature": Step(
        lambda p: not p.greedy and not p.uses_dynamic_temperature and p.temperature != 1,
        lambda x, ps: apply_temperature(x, [p.temperature for p in ps]),
    ),
    "dynamic_temperature": Step(
        lambda p: p.uses_dynamic_temperature,
        lambda x, ps: apply_dynamic_temperature(
            x, [p.dynatemp_low for p in ps], [p.dynatemp_high for p in ps], [p.dynatemp_exponent for p in ps]
        ),
    ),
    "quadratic_sampling": Step(
        lambda p: p.smoothing_factor > 0,
        lambda x, ps: apply_smoothing(x, [p.smoothing_factor for p in ps], [p.smoothing_curve for p in ps]),
    ),
}


# The steps above that remove tokens (the others reshape the distribution).
TRUNCATING_STEPS = frozenset(STEPS) - {"temperature", "dynamic_temperature", "quadratic_sampling"}


def on_rows(logits: torch.Tensor, params: list[SamplingParams], step: Step) -> torch.Tensor:
    """`step` applied to the rows whose params use it; the others unchanged."""
    members = [i for i, p in enumerate(params) if step.uses(p)]
    if not members:
        return logits
    if len(members) == len(params):
        return step.apply(logits, params)
    index = torch.tensor(members, device=logits.device)
    part = step.apply(logits.index_select(0, index), [params[i] for i in members])
    return logits.index_copy(0, index, part)
