"""One forward for a whole engine step on the CPU: the decode rows of the running sequences and the step's prompt
chunks together, instead of a decode forward and one forward a chunk.

Everything in a Llama layer but attention works row by row: the rows of every part go through each product
together, so the weights are read once a step instead of once a part, and a forward's fixed costs are paid once.
Only attention splits them (fused_layers.py): a chunk attends to its own prompt's cache, the decode rows to the
bucket cache on the engine's kernel. While a long prompt is read in chunks beside running streams, this saves each
chunk step a whole decode forward (bench/mixed_step.py).

It runs the model's own modules (embedding, rotary embedding, decoder layers, norm, head) in transformers' order,
so it exists only for exactly transformers' Llama whose every attention is the engine's stacked one on the
kernels (`MixedStep.supports`).
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedModel

from server.engine.forward.fused_layers import StackedAttention
from server.engine.forward.mixed_layout import ChunkRows, MixedLayout
from server.engine.kv.step_layout import DecodeBatch, StepLayout


class PromptChunk(NamedTuple):
    tokens: Sequence[int]
    start: int  # the position of its first token: the positions its prompt's cache holds
    cache: DynamicCache
    ends_prompt: bool  # its last position's logits are wanted


class MixedStep:
    def __init__(self, model: PreTrainedModel) -> None:
        self._model = model

    @staticmethod
    def supports(model: PreTrainedModel) -> bool:
        return type(model) is LlamaForCausalLM and all(
            isinstance(layer.self_attn, StackedAttention) and layer.self_attn.decode_kernel
            for layer in model.model.layers
        )

    def __call__(self, chunks: list[PromptChunk], batch: DecodeBatch | None) -> torch.Tensor:
        """Logits [chunks that end their prompt + decode rows, vocab]: those chunks' last positions' in order,
        then each decode row's."""
        model = self._model.model
        tokens = [torch.tensor(chunk.tokens) for chunk in chunks]
        positions = [torch.arange(chunk.start, chunk.start + len(chunk.tokens)) for chunk in chunks]
        if batch is not None:
            tokens.append(batch.inputs[0])
            positions.append(batch.inputs[1])
        hidden = model.embed_tokens(torch.cat(tokens).unsqueeze(0))
        position_embeddings = model.rotary_emb(hidden, position_ids=torch.cat(positions).unsqueeze(0))
        decode = None if batch is None else StepLayout(batch, batch.inputs[1])
        layout = MixedLayout([ChunkRows(len(chunk.tokens), chunk.cache) for chunk in chunks], decode)
        for layer in model.layers:
            hidden = layer(hidden, position_embeddings=position_embeddings, bucket_layout=layout)
        return self._model.lm_head(model.norm(hidden[0, _logit_rows(chunks, hidden.shape[1])]))


def _logit_rows(chunks: list[PromptChunk], rows: int) -> torch.Tensor:
    """The rows whose logits a step wants: the last of each chunk that ends its prompt, then every decode row."""
    ends = torch.tensor([len(chunk.tokens) for chunk in chunks]).cumsum(0) - 1
    ending = ends[torch.tensor([chunk.ends_prompt for chunk in chunks])]
    return torch.cat([ending, torch.arange(int(ends[-1]) + 1, rows)])
