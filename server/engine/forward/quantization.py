"""`--quantization`: the merged model's decoder layers on fewer bits, checked at load time against the model as
it was.

Before quantizing, a probe text in the model's `::::` format runs through the merged model and its next-token
distributions are kept; after, the same text must give distributions within the method's bounds (mean KL
divergence, top-1 agreement). A broken result (not finite, every logit equal, bounds missed) stops the start-up
with the numbers; the measured agreement goes into the start-up log and `/health`. `python -m bench.fidelity`
measures the same on a long roleplay, on the user's own weights.
"""

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from server.engine.forward.fp8_linear import quantize_linear_layers_fp8
from server.engine.forward.int4_linear import quantize_linear_layers_int4
from server.engine.forward.int8_linear import compute_dtype, quantize_linear_layers
from server.engine.forward.module_swap import decoder_layers
from server.engine.options import ModelLoadError
from server.engine.text.vocabulary import Vocabulary

log = logging.getLogger(__name__)

# (largest mean KL divergence in nats, smallest top-1 agreement) a method must keep on the probe. int8's bounds
# are its quality; int4's and fp8's only catch a broken result: 4 bits in groups, or 3 mantissa bits in weights
# and activations, cost a small model real quality (the embedded one on the probe: int4 with groups of 128 mean
# KL 0.3 nats; fp8 0.035 and 86 % top-1), which the log and /health report.
BOUNDS = {"int8": (0.05, 0.9), "int4": (1.0, 0.5), "fp8": (0.2, 0.7)}
PROBE = (
    "::::user: Let's engage together in a roleplay.\n\n# Characters\n\n## Mira\nA cartographer who trusts maps "
    "more than people.\n\n## Corin\nHer apprentice, restless and curious.\n\n# Scenario\nA storm keeps them in "
    'the lighthouse overnight.\n\n::::user:Corin: Corin pressed his face to the glass. "Do you think the ship '
    'made it past the rocks?"\n\n::::assistant:Mira: Mira did not look up from the chart. "Ships that trust the '
    'light usually do," she said, tracing the coastline with one ink-stained finger.\n\n::::user:Corin: "And the '
    "ones that don't?\"\n\n::::assistant:Mira:"
)


@dataclass(frozen=True)
class QuantizationReport:
    method: str
    layers: int  # linear layers quantized
    mean_kl: float  # nats, next-token distributions of the probe against the unquantized model
    top1_agreement: float  # share of the probe's positions with the same most likely token


def quantize(
    model: PreTrainedModel, vocabulary: Vocabulary, method: str, int4_group_size: int = 128
) -> QuantizationReport:
    """Quantizes `model` in place by `method` and checks it on the probe; raises ModelLoadError when broken."""
    ids = torch.tensor([vocabulary.encode(PROBE, add_bos=True)], device=model.device)
    with torch.inference_mode():
        before = model(input_ids=ids).logits[0].float()
        layers = quantize_layers(decoder_layers(model), method, int4_group_size)
        after = model(input_ids=ids).logits[0].float()
    report = QuantizationReport(method, layers, *agreement(before, after))
    problem = _problem(report, after)
    if problem:
        raise ModelLoadError(f"--quantization {method} broke the model: {problem}")
    log.info(
        "quantization %s: %d linear layers; on the probe, mean KL %.4f nats, top-1 agreement %.1f %%",
        method,
        layers,
        report.mean_kl,
        report.top1_agreement * 100,
    )
    return report


def quantize_layers(root: torch.nn.Module, method: str, int4_group_size: int = 128) -> int:
    """Replaces the plain linear layers under `root` by `method`'s (int8, int4 or fp8); returns how many."""
    if method == "int8":
        return quantize_linear_layers(root)
    if method == "fp8":
        return quantize_linear_layers_fp8(root)
    return quantize_linear_layers_int4(root, int4_group_size)


def activation_dtype(method: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The least precise dtype a `method` model's forward computes in (the captured-decode check's tolerance;
    fp8 products count as bfloat16's: their codes are rounded, the sums are not)."""
    return torch.bfloat16 if method in ("int4", "fp8") else compute_dtype(dtype, device)


def agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(mean KL(reference || other) over positions, share of positions with the same arg-max), from [positions,
    vocab] logits."""
    kl = next_token_kl(reference.float().log_softmax(-1), other.float().log_softmax(-1))
    same = (reference.argmax(-1) == other.argmax(-1)).float()
    return float(kl.mean()), float(same.mean())


def next_token_kl(reference_logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) of each position's next-token distribution, from [positions, vocab] log-probs."""
    return (reference_logprobs.exp() * (reference_logprobs - other_logprobs)).sum(-1)


def _problem(report: QuantizationReport, logits: torch.Tensor) -> str | None:
    if not bool(torch.isfinite(logits).all()):
        return "its logits are not finite (NaN or infinity)"
    if bool((logits.amax(-1) == logits.amin(-1)).any()):
        return "every logit of a position is equal"
    most_kl, least_top1 = BOUNDS[report.method]
    if not (report.mean_kl <= most_kl and report.top1_agreement >= least_top1):
        return (
            f"on the probe text, mean KL {report.mean_kl:.4f} nats (at most {most_kl}) and top-1 agreement "
            f"{report.top1_agreement:.1%} (at least {least_top1:.0%})"
        )
    return None
