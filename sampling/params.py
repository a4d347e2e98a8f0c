"""Per-request sampling parameters, validated once when a request is accepted."""

import math
from dataclasses import dataclass, field


class SamplingParamsError(ValueError):
    """A sampling value a client sent is out of range; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """The sampling chain's settings for one request. Defaults are the Herrsimian model card's."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.05
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.temperature >= 0 and math.isfinite(self.temperature), "temperature", "must be >= 0")
        _require(self.top_k >= -1, "top_k", "must be >= -1 (0 and -1 turn it off)")
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _require(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        for token_id, bias in self.logit_bias.items():
            _require(token_id >= 0, "logit_bias", f"token id {token_id} is negative")
            _require(-100 <= bias <= 100, "logit_bias", f"bias {bias} for token {token_id} is outside [-100, 100]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _require(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise SamplingParamsError(param, f"{param} {message}")
