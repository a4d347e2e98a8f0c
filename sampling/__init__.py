"""Per-request sampling parameters and the batched sampling chain (torch only)."""

from sampling.chain import probabilities, sample_next_tokens
from sampling.params import SamplingParams, SamplingParamsError

__all__ = ["SamplingParams", "SamplingParamsError", "probabilities", "sample_next_tokens"]
