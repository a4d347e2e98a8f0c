"""The order of the sampling steps, and every client's way of writing it.

Canonical steps: penalties -> dry -> top_k -> top_p -> min_p -> temperature (temperature last, as SillyTavern's
`temperature_last: true` asks). Clients write the order with text-generation-webui names (`sampler_priority`),
llama.cpp names (`samplers`) or KoboldCpp ids (`sampler_order`). Names of samplers this server does not
implement are accepted and skipped (they are neutral in those clients unless configured); names nobody uses are
an error.
"""

from collections.abc import Iterable, Sequence

DEFAULT_ORDER: tuple[str, ...] = ("penalties", "dry", "top_k", "top_p", "min_p", "temperature")

_WEBUI_NAMES = {
    "repetition_penalty": "penalties",
    "presence_penalty": "penalties",
    "frequency_penalty": "penalties",
    "dry": "dry",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
}
_WEBUI_UNIMPLEMENTED = {
    "dynamic_temperature",
    "quadratic_sampling",
    "top_n_sigma",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "tfs",
    "top_a",
    "adaptive_p",
    "mirostat",
    "xtc",
    "encoder_repetition_penalty",
    "no_repeat_ngram",
}
_LLAMACPP_NAMES = {
    "penalties": "penalties",
    "dry": "dry",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "temperature": "temperature",
}
_LLAMACPP_UNIMPLEMENTED = {"top_n_sigma", "typ_p", "typical_p", "tfs_z", "xtc", "adaptive_p", "infill", "mirostat"}
# KoboldCpp ids: 0 top-k, 1 top-a, 2 top-p, 3 tail-free, 4 typical, 5 temperature, 6 repetition penalty (KoboldCpp
# applies DRY in the same stage).
_KOBOLD_IDS: dict[int, tuple[str, ...]] = {
    0: ("top_k",),
    1: (),
    2: ("top_p",),
    3: (),
    4: (),
    5: ("temperature",),
    6: ("penalties", "dry"),
}


class UnknownSamplerError(ValueError):
    def __init__(self, param: str, name: object) -> None:
        super().__init__(f"{param}: unknown sampler {name!r}")
        self.param = param


def order_from_names(names: Iterable[str], param: str) -> tuple[str, ...]:
    """text-generation-webui's `sampler_priority` or llama.cpp's `samplers`."""
    known, skipped = (
        (_WEBUI_NAMES, _WEBUI_UNIMPLEMENTED)
        if param == "sampler_priority"
        else (_LLAMACPP_NAMES, _LLAMACPP_UNIMPLEMENTED)
    )
    steps = []
    for name in names:
        if name in known:
            steps.append(known[name])
        elif name not in skipped:
            raise UnknownSamplerError(param, name)
    return complete_order(steps)


def order_from_kobold_ids(ids: Iterable[int]) -> tuple[str, ...]:
    steps: list[str] = []
    for sampler_id in ids:
        if sampler_id not in _KOBOLD_IDS:
            raise UnknownSamplerError("sampler_order", sampler_id)
        steps.extend(_KOBOLD_IDS[sampler_id])
    return complete_order(steps)


def complete_order(steps: Sequence[str]) -> tuple[str, ...]:
    """Deduplicates `steps` and inserts the steps they leave out where the default order has them: right after
    the nearest step that precedes them there."""
    order = list(dict.fromkeys(steps))
    for index, step in enumerate(DEFAULT_ORDER):
        if step in order:
            continue
        before = [s for s in DEFAULT_ORDER[:index] if s in order]
        order.insert(order.index(before[-1]) + 1 if before else 0, step)
    return tuple(order)


def with_temperature_last(order: Sequence[str], temperature_last: bool) -> tuple[str, ...]:
    """`temperature_last: true` moves temperature to the end; false leaves the order as it is."""
    if not temperature_last:
        return tuple(order)
    return (*(step for step in order if step != "temperature"), "temperature")
