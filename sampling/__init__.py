"""Per-request sampling parameters (`sampling.params`, pure Python) and the batched sampling chain
(`sampling.sampler`, torch): importing the package brings only the parameters, so the HTTP process that validates
them never loads torch."""

from sampling.order import DEFAULT_ORDER, UnknownSamplerError
from sampling.params import SamplingParams, SamplingParamsError

__all__ = ["DEFAULT_ORDER", "SamplingParams", "SamplingParamsError", "UnknownSamplerError"]
