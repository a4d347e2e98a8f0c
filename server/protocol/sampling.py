"""The sampler fields every client sends, under every client's name, mapped onto one SamplingParams.

SillyTavern sends the same setting under several names at once (`repetition_penalty`, `rep_pen`,
`repeat_penalty`); the first name listed in each alias set wins. A field left out or sent as null keeps the
server's default (the model card's, or the preset file's).
"""

import dataclasses
import json
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, ConfigDict, Field

from sampling import SamplingParams, SamplingParamsError, UnknownSamplerError
from sampling.order import order_from_kobold_ids, order_from_names, with_temperature_first, with_temperature_last
from server.protocol.body import RequestBody


def _bias_pairs_to_dict(value: object) -> object:
    """llama.cpp sends logit_bias as a list of [token id, bias] pairs (bias false: never); OpenAI as an object."""
    if isinstance(value, list):
        return {
            str(pair[0]): -100 if pair[1] is False else pair[1]
            for pair in value
            if isinstance(pair, list | tuple) and len(pair) == 2
        }
    return value


def parse_breakers(value: object) -> object:
    """A JSON list, a JSON-encoded list in a string, list items typed without brackets (`"\\n", ":"`), or raw
    comma-separated text (where a typed `\\n` is a newline)."""
    if not isinstance(value, str):
        return value
    for candidate in (value, f"[{value}]"):
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, list):
            return parsed
    parts = (part.strip(" ").replace("\\n", "\n").replace("\\t", "\t") for part in value.split(","))
    return [part for part in parts if part]


def _token_id_list(value: object) -> object:
    """`custom_token_bans` arrives as comma-separated ids ("128009, 13"); `banned_tokens` as a list or the same."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SamplerFields(RequestBody):
    # Unknown fields are kept (not rejected) so the response can list them as ignored.
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=-1)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(
        None, gt=0, validation_alias=AliasChoices("repetition_penalty", "rep_pen", "repeat_penalty")
    )
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    penalty_range: int | None = Field(
        None,
        validation_alias=AliasChoices("penalty_range", "repetition_penalty_range", "rep_pen_range", "repeat_last_n"),
    )
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_penalty_last_n: int | None = Field(None, validation_alias=AliasChoices("dry_penalty_last_n", "dry_range"))
    dry_sequence_breakers: Annotated[list[str] | None, BeforeValidator(parse_breakers)] = None
    seed: int | None = Field(None, validation_alias=AliasChoices("seed", "sampler_seed"))
    logit_bias: Annotated[dict[str, float] | None, BeforeValidator(_bias_pairs_to_dict)] = None
    custom_token_bans: Annotated[list[int] | None, BeforeValidator(_token_id_list)] = Field(
        None, validation_alias=AliasChoices("custom_token_bans", "banned_tokens")
    )
    min_tokens: int | None = Field(None, ge=0, validation_alias=AliasChoices("min_tokens", "min_length"))
    ignore_eos: bool | None = None
    ban_eos_token: bool | None = None
    banned_strings: list[str] | None = Field(
        None, max_length=64, description="Never sent: the server backs off and samples another token."
    )
    cache_reuse: int | None = Field(
        None,
        ge=0,
        validation_alias=AliasChoices("n_cache_reuse", "cache_reuse"),
        description="Reuse cached runs of at least this many prompt tokens that only moved (0: off). Unset: the "
        "server's --cache-reuse.",
    )
    sampler_priority: list[str] | None = None
    samplers: list[str] | None = None
    sampler_order: list[int] | None = None
    temperature_last: bool | None = None
    xtc_threshold: float | None = None
    xtc_probability: float | None = None
    top_n_sigma: float | None = Field(None, validation_alias=AliasChoices("top_n_sigma", "nsigma"))
    typical_p: float | None = Field(None, validation_alias=AliasChoices("typical_p", "typical", "typ_p"))
    tfs: float | None = Field(None, validation_alias=AliasChoices("tfs", "tfs_z"))
    top_a: float | None = None
    epsilon_cutoff: float | None = Field(None, description="In units of 1e-4, as text-generation-webui takes it.")
    eta_cutoff: float | None = Field(None, description="In units of 1e-4, as text-generation-webui takes it.")
    smoothing_factor: float | None = None
    smoothing_curve: float | None = None
    dynamic_temperature: bool | None = Field(
        None, description="text-generation-webui's switch for dynatemp_low/high; the range replaces temperature."
    )
    dynatemp_low: float | None = Field(None, validation_alias=AliasChoices("dynatemp_low", "dynatemp_min", "min_temp"))
    dynatemp_high: float | None = Field(
        None, validation_alias=AliasChoices("dynatemp_high", "dynatemp_max", "max_temp")
    )
    dynatemp_exponent: float | None = Field(None, validation_alias=AliasChoices("dynatemp_exponent", "temp_exponent"))
    dynatemp_range: float | None = Field(
        None, description="llama.cpp and KoboldCpp: dynamic temperature from temperature - range to + range."
    )
    mirostat_mode: int | None = Field(None, validation_alias=AliasChoices("mirostat_mode", "mirostat"))
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None

    def sampling_params(self, defaults: SamplingParams, always_breakers: list[str]) -> SamplingParams:
        """The request's values over `defaults`; raises SamplingParamsError naming the first bad field."""
        given: dict[str, Any] = {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "penalty_range": self.penalty_range,
            "dry_multiplier": self.dry_multiplier,
            "dry_base": self.dry_base,
            "dry_allowed_length": self.dry_allowed_length,
            "dry_penalty_last_n": self.dry_penalty_last_n,
            "seed": None if self.seed is None or self.seed < 0 else self.seed,
            "logit_bias": _token_bias(self.logit_bias) if self.logit_bias else None,
            "banned_token_ids": frozenset(self.custom_token_bans) if self.custom_token_bans else None,
            "min_tokens": self.min_tokens,
            "ignore_eos": True if self.ignore_eos or self.ban_eos_token else None,
            "order": self._order(defaults.order),
            "xtc_threshold": self.xtc_threshold,
            "xtc_probability": self.xtc_probability,
            "top_n_sigma": self.top_n_sigma,
            "typical_p": self.typical_p,
            "tfs": self.tfs,
            "top_a": self.top_a,
            "epsilon_cutoff": self.epsilon_cutoff,
            "eta_cutoff": self.eta_cutoff,
            "smoothing_factor": self.smoothing_factor,
            "smoothing_curve": self.smoothing_curve,
            "dynatemp_exponent": self.dynatemp_exponent,
            "mirostat_mode": self.mirostat_mode,
            "mirostat_tau": self.mirostat_tau,
            "mirostat_eta": self.mirostat_eta,
            **self._dynamic_range(defaults.temperature),
        }
        if self.dry_sequence_breakers is not None:
            given["dry_sequence_breakers"] = tuple(self.dry_sequence_breakers)
        params = dataclasses.replace(defaults, **{name: value for name, value in given.items() if value is not None})
        missing = [b for b in always_breakers if b not in params.dry_sequence_breakers]
        return dataclasses.replace(params, dry_sequence_breakers=(*params.dry_sequence_breakers, *missing))

    def _dynamic_range(self, default_temperature: float) -> dict[str, float | None]:
        """Dynamic temperature, as each client writes it: llama.cpp's and KoboldCpp's `temperature` +- `dynatemp_range`;
        text-generation-webui's `dynamic_temperature` switch with `dynatemp_low/high` (SillyTavern also sends their
        mean as `temperature`, which the range replaces); Aphrodite's and TabbyAPI's bounds without a switch. An
        explicit `dynamic_temperature: false` turns it off."""
        if self.dynamic_temperature is False:
            return {}
        if self.dynatemp_range:
            centre = self.temperature if self.temperature is not None else default_temperature
            return {
                "dynatemp_low": max(0.0, centre - self.dynatemp_range),
                "dynatemp_high": centre + self.dynatemp_range,
            }
        low, high = self.dynatemp_low, self.dynatemp_high
        if self.dynamic_temperature and low is not None and low == high:
            return {"temperature": low}  # a range of one value is that temperature
        if low is not None and high is not None and high < low:
            raise SamplingParamsError("dynatemp_high", f"dynatemp_high ({high}) must not be below dynatemp_low ({low})")
        return {"dynatemp_low": low, "dynatemp_high": high}

    def _order(self, default: tuple[str, ...]) -> tuple[str, ...] | None:
        try:
            if self.sampler_priority is not None:
                order = order_from_names(self.sampler_priority, "sampler_priority")
            elif self.samplers is not None:
                order = order_from_names(self.samplers, "samplers")
            elif self.sampler_order is not None:
                order = order_from_kobold_ids(self.sampler_order)
            elif self.temperature_last is None:
                return None
            else:
                order = default if self.temperature_last else with_temperature_first(default)
        except UnknownSamplerError as error:
            raise SamplingParamsError(error.param, str(error)) from error
        return with_temperature_last(order, bool(self.temperature_last))


def _token_bias(bias: dict[str, float]) -> dict[int, float]:
    parsed = {}
    for key, value in bias.items():
        try:
            parsed[int(key)] = value
        except ValueError as error:
            raise SamplingParamsError("logit_bias", f"logit_bias key '{key}' is not a token id") from error
    return parsed
