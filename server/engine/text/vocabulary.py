"""The served model's tokenizer and its tables: what the serving layer may ask of the model without touching it
(encoding with the BOS rule, decoding, one token's text, which texts are special tokens). It is built in the
engine process and sent to the HTTP process, which thus needs the tokenizer but never torch."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from server.engine.text.detokenizer import token_bytes_table, token_texts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Vocabulary:
    def __init__(self, tokenizer: "PreTrainedTokenizerBase", size: int, eos_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.size = size
        self.eos_ids = eos_ids
        self.bos_id: int | None = tokenizer.bos_token_id
        self.bos_text: str = tokenizer.bos_token or ""
        self.token_bytes = token_bytes_table(tokenizer, size)
        # No token covers more characters of a text than this (a character is at least one byte).
        self.max_token_chars = max(map(len, self.token_bytes), default=1) or 1
        self.special_ids = frozenset(tokenizer.all_special_ids)
        # Texts user content must not contain: each would be read as its special token.
        self.special_texts = frozenset(
            [*tokenizer.all_special_tokens, *(t.content for t in tokenizer.added_tokens_decoder.values())]
        )

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        """The text's ids, BOS first when asked. A text that already starts with the BOS text (for Llama-3,
        `<|begin_of_text|>`) is read as the special token itself, so it is never doubled."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self.with_bos(ids) if add_bos else ids

    def with_bos(self, ids: Sequence[int]) -> list[int]:
        return with_bos(ids, self.bos_id)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def token_text(self, token_id: int) -> str:
        """One token's own text (a token holding part of a UTF-8 character shows replacement characters)."""
        return self.token_bytes[token_id].decode("utf-8", errors="replace")

    def outside(self, ids: Sequence[int]) -> list[int]:
        """The ids that are not in this vocabulary."""
        return [token for token in ids if not 0 <= token < self.size]

    def texts(self) -> list[str]:
        """Every token's text, special tokens as empty strings (what the sampler's DRY breakers match)."""
        return token_texts(self.token_bytes, self.special_ids)

    def tokenize_plain(self, text: str) -> list[int]:
        """Ids of `text` with no special tokens added (how the sampler tokenises breaker strings)."""
        return self.tokenizer.encode(text, add_special_tokens=False)


def with_bos(ids: Sequence[int], bos_id: int | None) -> list[int]:
    """`ids` starting with exactly one BOS (where the model has one)."""
    if bos_id is None or (ids and ids[0] == bos_id):
        return list(ids)
    return [bos_id, *ids]
