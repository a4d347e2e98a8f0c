"""The order of the sampling steps, and every client's way of writing it.

Canonical steps, in text-generation-webui's default order with `temperature_last` (as SillyTavern asks):
penalties -> dry -> top_n_sigma -> top_k -> top_p -> typical_p -> epsilon_cutoff -> eta_cutoff -> tfs -> top_a ->
min_p -> mirostat -> xtc -> temperature -> dynamic_temperature -> quadratic_sampling. Clients write the order with
text-generation-webui names (`sampler_priority`), llama.cpp names (`samplers`) or KoboldCpp ids
(`sampler_order`). Names of samplers this server does not implement are accepted and skipped (they are neutral in
those clients unless configured); names nobody uses are an error.
"""

from collections.abc import Iterable, Sequence

# The steps that `temperature_last` moves to the end, in this order (text-generation-webui's rule).
TEMPERATURE_STEPS: tuple[str, ...] = ("temperature", "dynamic_temperature", "quadratic_sampling")
DEFAULT_ORDER: tuple[str, ...] = (
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "top_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "tfs",
    "top_a",
    "min_p",
    "mirostat",
    "xtc",
    *TEMPERATURE_STEPS,
)

_WEBUI_NAMES = {
    "repetition_penalty": "penalties",
    "presence_penalty": "penalties",
    "frequency_penalty": "penalties",
    **{step: step for step in DEFAULT_ORDER if step != "penalties"},
}
_WEBUI_UNIMPLEMENTED = {"adaptive_p", "encoder_repetition_penalty", "no_repeat_ngram"}
_LLAMACPP_NAMES = {
    "penalties": "penalties",
    "dry": "dry",
    "top_n_sigma": "top_n_sigma",
    "top_k": "top_k",
    "top_p": "top_p",
    "typ_p": "typical_p",
    "typical_p": "typical_p",
    "tfs_z": "tfs",
    "min_p": "min_p",
    "xtc": "xtc",
    "mirostat": "mirostat",
    # llama.cpp's temperature step also applies its dynamic temperature (`dynatemp_range`).
    "temperature": "temperature",
}
_LLAMACPP_UNIMPLEMENTED = {"adaptive_p", "infill"}
# KoboldCpp ids: 0 top-k, 1 top-a, 2 top-p (KoboldCpp applies min-p in the same stage), 3 tail-free, 4 typical,
# 5 temperature (with its dynamic temperature and smoothing), 6 repetition penalty (and DRY, in the same stage).
_KOBOLD_IDS: dict[int, tuple[str, ...]] = {
    0: ("top_k",),
    1: ("top_a",),
    2: ("top_p", "min_p"),
    3: ("tfs",),
    4: ("typical_p",),
    5: TEMPERATURE_STEPS,
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
    """`temperature_last: true` moves temperature, dynamic temperature and smoothing to the end (in that order);
    false leaves the order as it is."""
    if not temperature_last:
        return tuple(order)
    return (*(step for step in order if step not in TEMPERATURE_STEPS), *TEMPERATURE_STEPS)


def with_temperature_first(order: Sequence[str]) -> tuple[str, ...]:
    """`temperature_last: false` without an explicit order: text-generation-webui's classic order, the temperature
    steps right after the penalties and DRY."""
    rest = [step for step in order if step not in TEMPERATURE_STEPS]
    cut = max(rest.index("penalties"), rest.index("dry")) + 1
    return (*rest[:cut], *TEMPERATURE_STEPS, *rest[cut:])
