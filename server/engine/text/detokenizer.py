"""Incremental detokenization that never splits a UTF-8 character.

Every token id maps to the exact bytes it stands for; bytes are fed through an incremental UTF-8 decoder, which
holds back an incomplete character until the token that completes it arrives. An emoji or a CJK character spread
over several byte-level tokens therefore comes out whole, in one piece.
"""

import codecs
import json
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tokenizer object only: the HTTP process never imports transformers' modules itself
    from transformers import PreTrainedTokenizerBase

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible map from bytes to printable characters, inverted (character -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


def token_bytes_table(tokenizer: "PreTrainedTokenizerBase", vocab_size: int) -> list[bytes]:
    """The bytes of every token id below `vocab_size`; special tokens map to their text, ids past the tokenizer
    to nothing."""
    piece_bytes = _piece_decoder(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    table = [
        (piece or "").encode() if token_id in special or piece is None else piece_bytes(token_id, piece)
        for token_id, piece in enumerate(pieces)
    ]
    return table + [b""] * (vocab_size - len(table))


def _piece_decoder(tokenizer: "PreTrainedTokenizerBase") -> Callable[[int, str], bytes]:
    """How a vocabulary piece maps back to bytes, read from the tokenizer's own decoder pipeline."""
    decoder = json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"))
    if '"ByteLevel"' in decoder:
        alphabet = _byte_level_alphabet()
        return lambda _, piece: bytes(alphabet[char] for char in piece)
    if '"ByteFallback"' in decoder or '"Metaspace"' in decoder:
        return lambda _, piece: _sentencepiece_bytes(piece)
    return lambda token_id, _: str(tokenizer.decode([token_id])).encode()


def _sentencepiece_bytes(piece: str) -> bytes:
    byte = _BYTE_FALLBACK.match(piece)
    return bytes([int(byte.group(1), 16)]) if byte else piece.replace("▁", " ").encode()


def token_texts(table: Sequence[bytes], special_ids: frozenset[int]) -> list[str]:
    """Each token's own text, as DRY's breaker analysis reads it; special tokens have none."""
    return ["" if i in special_ids else piece.decode("utf-8", errors="replace") for i, piece in enumerate(table)]


class IncrementalDetokenizer:
    """Turns token ids into text one token at a time; `skip_ids` (special tokens) produce no text."""

    def __init__(self, table: Sequence[bytes], skip_ids: frozenset[int]) -> None:
        self._table = table
        self._skip_ids = skip_ids
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text that became complete with this token (possibly empty)."""
        if token_id in self._skip_ids:
            return ""
        return self._decoder.decode(self._table[token_id])

    def checkpoint(self) -> tuple[bytes, int]:
        return self._decoder.getstate()

    def restore(self, state: tuple[bytes, int]) -> None:
        self._decoder.setstate(state)
