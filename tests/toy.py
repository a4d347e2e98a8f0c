"""Small stand-ins the unit tests build on: a tiny random Llama and a greedy toy tokenizer."""

from collections.abc import Callable, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from server.engine.forward.runner import ModelRunner


def tiny_llama(**sizes: int) -> LlamaForCausalLM:
    """A real Llama architecture with random weights: 64 tokens, 2 layers, grouped-query attention; `sizes`
    overrides any of these config fields."""
    torch.manual_seed(0)
    defaults = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    }
    return LlamaForCausalLM(LlamaConfig(**(defaults | sizes))).eval()


def llama_with_head_dim_64() -> LlamaForCausalLM:
    """A real Llama with random weights whose attention the CPU kernels take: heads of 64, 3 query heads a
    group."""
    return tiny_llama(
        vocab_size=96,
        hidden_size=384,
        intermediate_size=512,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )


def greedy_tokenizer(vocab: Sequence[str]) -> Callable[[str], list[int]]:
    """Longest match first over `vocab`: the canonical tokenisation of a toy vocabulary."""

    def tokenize(text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            piece = max((v for v in vocab if text.startswith(v, i)), key=len)
            ids.append(vocab.index(piece))
            i += len(piece)
        return ids

    return tokenize


def prefill(runner: ModelRunner, sample_id: str, token_ids: Sequence[int]) -> torch.Tensor:
    """The whole prompt at once, as the engine does over several steps: its next-token logits."""
    runner.start_prefill(sample_id, token_ids)
    while (logits := runner.prefill_chunk(sample_id, len(token_ids))) is None:
        pass
    return logits
