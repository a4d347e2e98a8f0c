"""Prompt text -> token ids, with exactly one BOS."""

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, add_bos: bool) -> list[int]:
    """The prompt's ids, BOS first when asked. A prompt that already starts with the BOS text (for Llama-3,
    `<|begin_of_text|>`) is read as the special token itself, so it is never doubled."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    return with_bos(ids, tokenizer.bos_token_id) if add_bos else ids


def with_bos(ids: Sequence[int], bos_id: int | None) -> list[int]:
    if bos_id is None or (ids and ids[0] == bos_id):
        return list(ids)
    return [bos_id, *ids]
