import pytest

from server.engine.text.detokenizer import IncrementalDetokenizer, token_bytes_table
from server.engine.text.stops import StopMatcher
from tests import tokenizers

TEXTS = [
    'Hello, world!\n\n::::user:Anon: "Hi," said Anon.',
    "Emoji 😀🎉 and flags 🇫🇷 mid-sentence",
    "日本語のテキストと中文",
    "Accents: café, naïve, Ærøskøbing",
    "  leading spaces\ttabs\r\nand CRLF",
]


def pieces(tokenizer, text: str) -> list[str]:
    table = token_bytes_table(tokenizer, len(tokenizer))
    detokenizer = IncrementalDetokenizer(table, frozenset(tokenizer.all_special_ids))
    return [detokenizer.push(token) for token in tokenizer.encode(text, add_special_tokens=False)]


@pytest.mark.parametrize("tokenizer", [tokenizers.smollm2, tokenizers.llama3], ids=["smollm2", "llama3"])
@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_is_exact_and_never_broken(tokenizer, text):
    out = pieces(tokenizer(), text)
    assert "".join(out) == text
    assert all("\ufffd" not in piece for piece in out)


def test_emoji_spread_over_tokens_comes_out_whole_in_one_piece():
    tokenizer = tokenizers.smollm2()
    assert len(tokenizer.encode("😀", add_special_tokens=False)) == 3
    assert pieces(tokenizer, "😀") == ["", "", "😀"]


def test_cjk_character_split_over_tokens_waits_for_its_last_byte():
    assert pieces(tokenizers.smollm2(), "日本語") == ["", "日", "本", "", "", "語"]


def test_special_tokens_produce_no_text():
    tokenizer = tokenizers.llama3()
    table = token_bytes_table(tokenizer, len(tokenizer))
    detokenizer = IncrementalDetokenizer(table, frozenset(tokenizer.all_special_ids))
    assert [detokenizer.push(token) for token in [128000, 13347, 128001]] == ["", "Hi", ""]


def test_ids_past_the_tokenizer_map_to_nothing():
    tokenizer = tokenizers.smollm2()
    assert token_bytes_table(tokenizer, len(tokenizer) + 2)[-2:] == [b"", b""]


def test_stop_string_inside_a_multibyte_character_split_across_tokens():
    detokenizer = IncrementalDetokenizer([b"caf", b"\xc3", b"\xa9 au lait"], frozenset())
    stops = StopMatcher(["é"])
    scans = [stops.push(detokenizer.push(token)) for token in (0, 1, 2)]
    assert [scan.release for scan in scans] == ["caf", "", ""]
    assert [scan.stopped for scan in scans] == [False, False, True]


def test_invalid_bytes_become_one_replacement_character_not_a_crash():
    detokenizer = IncrementalDetokenizer([b"ok", b"\xff"], frozenset())
    assert [detokenizer.push(0), detokenizer.push(1), detokenizer.push(0)] == ["ok", "\ufffd", "ok"]
