"""Per-request sampling parameters, validated once when a request is accepted."""

import math
from dataclasses import dataclass, field

from sampling.order import DEFAULT_ORDER

CARD_SEQUENCE_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*", "::::")
MAX_SEQUENCE_BREAKERS = 32
MAX_SEQUENCE_BREAKER_LENGTH = 64
# Below this, dividing logits by the temperature overflows float32: such temperatures mean greedy decoding.
GREEDY_BELOW_TEMPERATURE = 1e-5


class SamplingParamsError(ValueError):
    """A sampling value a client sent is out of range; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """The sampling chain's settings for one request. Defaults are the Herrsimian model card's: temperature 1.0,
    min-p 0.05, DRY 0.8 / 1.75 / 2 with `::::` among the breakers, every other sampler neutral."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_range: int = 0  # last N tokens the three penalties look at; 0 or -1: the whole context
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 0  # 0 or -1: the whole context
    dry_sequence_breakers: tuple[str, ...] = CARD_SEQUENCE_BREAKERS
    logit_bias: dict[int, float] = field(default_factory=dict)
    banned_token_ids: frozenset[int] = frozenset()
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    order: tuple[str, ...] = DEFAULT_ORDER
    # The samplers of text-generation-webui (docs/SAMPLERS.md); each default is "off".
    xtc_threshold: float = 0.1
    xtc_probability: float = 0.0
    top_n_sigma: float = 0.0
    typical_p: float = 1.0
    tfs: float = 1.0
    top_a: float = 0.0
    epsilon_cutoff: float = 0.0  # in units of 1e-4, as text-generation-webui takes it
    eta_cutoff: float = 0.0  # in units of 1e-4
    smoothing_factor: float = 0.0
    smoothing_curve: float = 1.0
    dynatemp_low: float = 1.0  # dynamic temperature is on iff dynatemp_high > dynatemp_low; it replaces temperature
    dynatemp_high: float = 1.0
    dynatemp_exponent: float = 1.0
    mirostat_mode: int = 0  # 2: mirostat v2
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1

    def __post_init__(self) -> None:
        _require(self.temperature >= 0 and math.isfinite(self.temperature), "temperature", "must be >= 0")
        _require(self.top_k >= -1, "top_k", "must be >= -1 (0 and -1 turn it off)")
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _require(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        # Dividing a logit by a smaller penalty would overflow float32.
        _require(0.01 <= self.repetition_penalty <= 10, "repetition_penalty", "must be in [0.01, 10]")
        _require(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        _require(-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        _require(self.penalty_range >= -1, "penalty_range", "must be >= -1 (0 and -1 mean the whole context)")
        _require(self.dry_multiplier >= 0 and math.isfinite(self.dry_multiplier), "dry_multiplier", "must be >= 0")
        _require(self.dry_base >= 1 and math.isfinite(self.dry_base), "dry_base", "must be >= 1")
        _require(self.dry_allowed_length >= 1, "dry_allowed_length", "must be >= 1")
        _require(self.dry_penalty_last_n >= -1, "dry_penalty_last_n", "must be >= -1 (0 and -1: whole context)")
        _require(
            len(self.dry_sequence_breakers) <= MAX_SEQUENCE_BREAKERS,
            "dry_sequence_breakers",
            f"may hold at most {MAX_SEQUENCE_BREAKERS} strings",
        )
        _require(
            all(0 < len(b) <= MAX_SEQUENCE_BREAKER_LENGTH for b in self.dry_sequence_breakers),
            "dry_sequence_breakers",
            f"must be non-empty strings of at most {MAX_SEQUENCE_BREAKER_LENGTH} characters",
        )
        _require(self.min_tokens >= 0, "min_tokens", "must be >= 0")
        _require(sorted(self.order) == sorted(DEFAULT_ORDER), "order", f"must be a permutation of {DEFAULT_ORDER}")
        for token_id, bias in self.logit_bias.items():
            _require(token_id >= 0, "logit_bias", f"token id {token_id} is negative")
            _require(-100 <= bias <= 100, "logit_bias", f"bias {bias} for token {token_id} is outside [-100, 100]")
        _require(all(t >= 0 for t in self.banned_token_ids), "banned_token_ids", "token ids must be >= 0")
        self._check_extra_samplers()

    def _check_extra_samplers(self) -> None:
        _require(0 <= self.xtc_threshold <= 1, "xtc_threshold", "must be in [0, 1]")
        _require(0 <= self.xtc_probability <= 1, "xtc_probability", "must be in [0, 1]")
        _require(0 <= self.top_n_sigma < math.inf, "top_n_sigma", "must be >= 0 (0 turns it off)")
        _require(0 < self.typical_p <= 1, "typical_p", "must be in (0, 1] (1 turns it off)")
        _require(0 <= self.tfs < math.inf, "tfs", "must be >= 0 (1 or more turns it off)")
        _require(0 <= self.top_a < math.inf, "top_a", "must be >= 0 (0 turns it off; it applies up to 1)")
        _require(0 <= self.epsilon_cutoff < math.inf, "epsilon_cutoff", "must be >= 0 (in units of 1e-4)")
        _require(0 <= self.eta_cutoff < math.inf, "eta_cutoff", "must be >= 0 (in units of 1e-4)")
        _require(0 <= self.smoothing_factor < math.inf, "smoothing_factor", "must be >= 0 (0 turns it off)")
        # Outside [1, 3] the curve is not monotonic: far tokens rise again, or near ones overtake the top.
        _require(1 <= self.smoothing_curve <= 3, "smoothing_curve", "must be in [1, 3]")
        _require(0 <= self.dynatemp_low < math.inf, "dynatemp_low", "must be >= 0")
        _require(0 <= self.dynatemp_high < math.inf, "dynatemp_high", "must be >= 0")
        _require(0 <= self.dynatemp_exponent < math.inf, "dynatemp_exponent", "must be >= 0")
        _require(
            self.mirostat_mode != 1, "mirostat_mode", "1 (mirostat v1) is not offered: use 2 (mirostat v2) or 0 (off)"
        )
        _require(self.mirostat_mode in (0, 2), "mirostat_mode", "must be 0 (off) or 2 (mirostat v2)")
        _require(0 <= self.mirostat_tau < math.inf, "mirostat_tau", "must be >= 0")
        _require(0 <= self.mirostat_eta < math.inf, "mirostat_eta", "must be >= 0")

    @property
    def greedy(self) -> bool:
        return not self.uses_dynamic_temperature and self.temperature < GREEDY_BELOW_TEMPERATURE

    @property
    def uses_dynamic_temperature(self) -> bool:
        return self.dynatemp_high > self.dynatemp_low

    @property
    def uses_mirostat(self) -> bool:
        return self.mirostat_mode == 2

    @property
    def uses_xtc(self) -> bool:
        return self.xtc_probability > 0

    @property
    def uses_dry(self) -> bool:
        return self.dry_multiplier > 0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0


def _require(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise SamplingParamsError(param, f"{param} {message}")
