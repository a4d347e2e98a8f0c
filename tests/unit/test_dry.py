"""DRY: exact penalties for hand-worked histories, and the fast path against the definition."""

import math
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sampling import SamplingParams
from sampling.sampler import Sampler
from server.engine.text.detokenizer import token_bytes_table, token_texts
from tests import tokenizers
from tests.dry_reference import dry_penalties, reference_dry
from tests.toy import greedy_tokenizer

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = [*LETTERS, "\n", ":", "::", "::::", "x:", *(f"w{i}" for i in range(60))]
CARD = {"multiplier": 0.8, "base": 1.75, "allowed_length": 2, "penalty_last_n": 0}


tokenize = greedy_tokenizer(VOCAB)


def ids(*pieces: str) -> list[int]:
    return [VOCAB.index(p) for p in pieces]


def dry(history: list[int], breakers: tuple[str, ...] = ("\n", "::::"), **overrides) -> dict[str, float]:
    options = CARD | overrides
    penalties = dry_penalties(history, vocab=VOCAB, tokenize=tokenize, sequence_breakers=breakers, **options)
    return {VOCAB[token]: significant(value) for token, value in penalties.items()}


def significant(value: float) -> float:
    """Six significant digits: the penalties are computed in float32."""
    return float(f"{value:.6g}")


def card_penalty(length: int, allowed: int = 2) -> float:
    return significant(0.8 * 1.75 ** (length - allowed))


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        (ids(*"abca"), {}),  # repeat of length 1: below the allowed length
        (ids(*"abcab"), {"c": card_penalty(2)}),
        (ids(*"abcdeabc"), {"d": card_penalty(3)}),
        (ids(*"abcdefghij", "z", *"abcdefghij"), {"z": card_penalty(10)}),
        (ids(*(f"w{i}" for i in range(60)), "z", *(f"w{i}" for i in range(60))), {"z": card_penalty(60)}),
    ],
    ids=["length-1", "length-2", "length-3", "length-10", "length-60"],
)
def test_repeats_of_growing_length(history, expected):
    assert dry(history) == expected


def test_allowed_length_boundaries():
    assert dry(ids(*"abcab"), allowed_length=3) == {}
    assert dry(ids(*"abcdabc"), allowed_length=3) == {"d": card_penalty(3, allowed=3)}
    assert dry(ids(*"abca"), allowed_length=1) == {"b": card_penalty(1, allowed=1)}


def test_breaker_inside_the_repeat_caps_the_match():
    assert dry(ids("a", "b", "\n", "c", "d", "e", "a", "b", "\n", "c", "d")) == {"e": card_penalty(2)}


def test_history_ending_in_a_breaker_is_not_penalised():
    assert dry(ids("a", "b", "c", "a", "b", "\n")) == {}


def test_a_candidate_that_is_a_breaker_is_never_penalised():
    assert dry(ids("a", "b", "\n", "c", "a", "b")) == {}


def test_window_cutting_the_earlier_occurrence():
    history = ids(*"abcxyzab")
    assert dry(history, penalty_last_n=8) == {"c": card_penalty(2)}
    assert dry(history, penalty_last_n=7) == {}
    assert dry(history, penalty_last_n=-1) == {"c": card_penalty(2)}


def test_run_of_one_token():
    assert dry(ids(*"aaaaa")) == {"a": card_penalty(4)}


def test_periodic_pattern():
    assert dry(ids(*"ababab")) == {"a": card_penalty(4)}


def test_label_mark_as_one_token_is_a_breaker():
    assert dry(ids("a", "b", "::::", "a", "b", "::::", "a", "b")) == {}


def test_label_mark_split_in_two_tokens_is_recognised():
    split = ids("x", "::", "::", "a", "b", "::", "::", "a", "b")
    assert dry(split) == {"::": card_penalty(2)}
    # Without the breaker, the match would run back over the split label.
    assert dry(split, breakers=("\n",)) == {"::": card_penalty(4)}


def test_breaker_split_after_a_longer_head():
    # "x:" + "::" + ":" spells x:::: ; the tail of "::::" after "x:" is tokenize(":::") = ["::", ":"].
    history = ids("a", "b", "x:", "::", ":", "a", "b", "x:", "::", ":", "a", "b")
    assert dry(history) == {"x:": card_penalty(2)}
    assert dry(history, breakers=("\n",)) == {"x:": card_penalty(7)}


def test_multiplier_zero_turns_dry_off():
    assert dry(ids(*"abcab"), multiplier=0) == {}


def test_huge_exponent_stays_finite():
    penalties = dry(ids(*(f"w{i}" for i in range(60)), "z", *(f"w{i}" for i in range(60))), base=10.0)
    assert math.isfinite(penalties["z"]) and penalties["z"] > 1e37


@cache
def llama3_vocab() -> list[str]:
    tokenizer = tokenizers.llama3()
    return token_texts(token_bytes_table(tokenizer, len(tokenizer)), frozenset(tokenizer.all_special_ids))


def llama3_tokenize(text: str) -> list[int]:
    return tokenizers.llama3().encode(text, add_special_tokens=False)


def llama3_dry(text: str, breakers=("\n", ":", '"', "*", "::::")) -> dict[str, float]:
    penalties = dry_penalties(
        llama3_tokenize(text), vocab=llama3_vocab(), tokenize=llama3_tokenize, sequence_breakers=breakers, **CARD
    )
    return {llama3_vocab()[token]: significant(value) for token, value in penalties.items()}


def test_llama3_verbatim_repeat():
    assert llama3_dry("the old man and the sea. the old man and the") == {" sea": card_penalty(4)}


def test_llama3_newline_inside_a_larger_token_is_a_breaker():
    # ".\n\n" is one token on Llama-3; it contains "\n", so the repeat cannot run across it.
    text = "one two three.\n\nfour one two three.\n\nfour one two"
    assert llama3_dry(text) == {" three": card_penalty(3)}
    assert llama3_dry(text, breakers=(":",)) == {" three": card_penalty(6)}


def test_llama3_label_mark_split_after_a_space():
    # " ::::" is " ::" + "::" on Llama-3: the head " ::" followed by the tail "::" is the breaker.
    text = "alpha beta gamma ::::alpha beta gamma ::::alpha beta"
    assert llama3_dry(text) == {" gamma": card_penalty(2)}
    assert llama3_dry(text, breakers=("\n",))[" gamma"] == card_penalty(7)


histories = st.lists(st.sampled_from(ids("a", "b", "c", "\n", ":", "::", "::::", "x:")), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    history=histories,
    allowed_length=st.integers(1, 4),
    penalty_last_n=st.sampled_from([-1, 0, 3, 8, 20]),
    breakers=st.sampled_from([("\n",), ("\n", "::::"), (":",), ("::::", "x"), ("ab", "\n")]),
)
def test_fast_path_matches_the_definition(history, allowed_length, penalty_last_n, breakers):
    options = CARD | {"allowed_length": allowed_length, "penalty_last_n": penalty_last_n}
    fast = dry_penalties(history, vocab=VOCAB, tokenize=tokenize, sequence_breakers=breakers, **options)
    slow = reference_dry(history, vocab=VOCAB, tokenize=tokenize, sequence_breakers=breakers, **options)
    assert fast.keys() == slow.keys()
    assert all(math.isclose(fast[t], slow[t], rel_tol=1e-5) for t in fast)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.sampled_from(["the", " cat", ".\n\n", " ::", "::", "::::", '"', " sat", ":"]), max_size=30))
def test_fast_path_matches_the_definition_on_llama3(words):
    history = llama3_tokenize("".join(words))
    options = CARD | {"sequence_breakers": ("\n", ":", '"', "*", "::::")}
    fast = dry_penalties(history, vocab=llama3_vocab(), tokenize=llama3_tokenize, **options)
    slow = reference_dry(history, vocab=llama3_vocab(), tokenize=llama3_tokenize, **options)
    assert fast.keys() == slow.keys()
    assert all(math.isclose(fast[t], slow[t], rel_tol=1e-5) for t in fast)


def forced(token: int) -> torch.Tensor:
    logits = torch.full((1, len(VOCAB)), float("-inf"))
    logits[0, token] = 0.0
    return logits


@settings(max_examples=200, deadline=None)
@given(
    history=histories,
    split=st.integers(0, 40),
    allowed_length=st.integers(1, 3),
    penalty_last_n=st.sampled_from([0, 4, 12]),
    breakers=st.sampled_from([("\n", "::::"), (":",), ("::::", "x")]),
)
def test_incremental_updates_match_the_definition(history, split, allowed_length, penalty_last_n, breakers):
    """The prompt seeds the state; every later token goes through the per-step vectorised update."""
    split = min(split, len(history))
    if split == 0:
        return
    options = CARD | {"allowed_length": allowed_length, "penalty_last_n": penalty_last_n}
    params = SamplingParams(
        temperature=0,
        dry_multiplier=options["multiplier"],
        dry_base=options["base"],
        dry_allowed_length=allowed_length,
        dry_penalty_last_n=penalty_last_n,
        dry_sequence_breakers=breakers,
    )
    sampler = Sampler(slots=2, capacity=len(history) + 4, vocab=VOCAB, tokenize=tokenize)
    other = sampler.add(ids(*"abab"), params)  # a second row in the batch, advancing alongside
    row = sampler.add(history[:split], params)
    for token in history[split:]:
        assert sampler.sample(torch.cat([forced(0), forced(token)]), [other, row])[1] == token
    penalty = sampler.dry_penalties([row])
    fast = {} if penalty is None else {int(t): float(penalty[0, t]) for t in penalty[0].nonzero().flatten()}
    slow = reference_dry(history, vocab=VOCAB, tokenize=tokenize, sequence_breakers=breakers, **options)
    assert fast.keys() == slow.keys()
    assert all(math.isclose(fast[t], slow[t], rel_tol=1e-5) for t in fast)


def test_steps_of_rows_without_dry_leave_the_rows_with_it_exact():
    """A step of rows that all go without DRY skips the match-length update; a row with DRY, in the next step
    it takes part in, still gets the penalties of the definition."""
    history = ids(*"abcabcabxabcabca")
    options = CARD | {"allowed_length": 2, "penalty_last_n": 0}
    params = SamplingParams(
        temperature=0, dry_multiplier=options["multiplier"], dry_base=options["base"], dry_allowed_length=2
    )
    sampler = Sampler(slots=2, capacity=len(history) + 16, vocab=VOCAB, tokenize=tokenize)
    plain = sampler.add(ids(*"abab"), SamplingParams(temperature=0, dry_multiplier=0))
    row = sampler.add(history[:4], params)
    for step, token in enumerate(history[4:]):
        if step % 2:
            assert sampler.sample(forced(1), [plain]) == [1]  # the row without DRY, alone
        assert sampler.sample(torch.cat([forced(0), forced(token)]), [plain, row])[1] == token
    penalty = sampler.dry_penalties([row])
    fast = {int(t): float(penalty[0, t]) for t in penalty[0].nonzero().flatten()}
    slow = reference_dry(
        history, vocab=VOCAB, tokenize=tokenize, sequence_breakers=params.dry_sequence_breakers, **options
    )
    assert fast and fast.keys() == slow.keys()
    assert all(math.isclose(fast[t], slow[t], rel_tol=1e-5) for t in fast)
