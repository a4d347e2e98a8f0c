from functools import cache

from server.engine.text.vocabulary import Vocabulary, with_bos
from tests import tokenizers


@cache
def vocabulary(name: str) -> Vocabulary:
    tokenizer = getattr(tokenizers, name)()
    return Vocabulary(tokenizer, len(tokenizer), frozenset())


def encode_prompt(name: str, text: str, *, add_bos: bool) -> list[int]:
    return vocabulary(name).encode(text, add_bos=add_bos)


BOS = 128000


def test_bos_added_once():
    ids = encode_prompt("llama3", "Hello", add_bos=True)
    assert ids == [BOS, 9906]


def test_prompt_starting_with_bos_text_is_not_given_a_second_one():
    assert encode_prompt("llama3", "<|begin_of_text|>Hello", add_bos=True) == [BOS, 9906]


def test_no_bos_when_not_asked():
    assert encode_prompt("llama3", "Hello", add_bos=False) == [9906]


def test_embedded_model_bos_is_its_own_token():
    tokenizer = tokenizers.smollm2()
    assert encode_prompt("smollm2", "Hello", add_bos=True) == encode_prompt(
        "smollm2", "<|im_start|>Hello", add_bos=True
    )
    assert encode_prompt("smollm2", "Hello", add_bos=True)[0] == tokenizer.bos_token_id == 1


def test_with_bos_on_empty_and_without_a_bos_token():
    assert with_bos([], 7) == [7]
    assert with_bos([3, 4], None) == [3, 4]
