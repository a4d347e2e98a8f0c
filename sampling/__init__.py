"""Per-request sampling parameters and the batched sampling chain (torch only)."""

from sampling.order import DEFAULT_ORDER, UnknownSamplerError
from sampling.params import SamplingParams, SamplingParamsError
from sampling.sampler import Sampler, probabilities

__all__ = ["DEFAULT_ORDER", "Sampler", "SamplingParams", "SamplingParamsError", "UnknownSamplerError", "probabilities"]
