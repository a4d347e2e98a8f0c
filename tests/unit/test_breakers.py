from sampling.breakers import BreakerCache, analyse_breakers, shared_breaker_cache
from tests.toy import greedy_tokenizer

VOCAB = ["a", ":", "::", "::::", "x:", "\n", ".\n\n", "b"]


tokenize = greedy_tokenizer(VOCAB)


def test_tokens_containing_a_breaker_are_single_breakers():
    analysis = analyse_breakers(["\n", "::::"], VOCAB, tokenize)
    assert analysis.single == {VOCAB.index("\n"), VOCAB.index(".\n\n"), VOCAB.index("::::")}


def test_heads_and_tails_of_a_split_breaker():
    analysis = analyse_breakers(["::::"], VOCAB, tokenize)
    colon, double, x_colon = VOCAB.index(":"), VOCAB.index("::"), VOCAB.index("x:")
    assert analysis.heads_by_tail == {
        (double, colon): frozenset({colon, double, x_colon}),  # a token ending in ":", then ":::" = "::" + ":"
        (double,): frozenset({double}),  # a token ending in "::", then "::"
    }
    assert analysis.occurrence_ending_at([0, x_colon, double, colon], 3) == 1
    assert analysis.occurrence_ending_at([0, double, double], 2) == 1
    assert analysis.occurrence_ending_at([0, double, colon], 2) is None


def test_analysis_is_cached_per_breaker_list():
    cache = BreakerCache(VOCAB, tokenize)
    assert cache.get(["\n", "::::"]) is cache.get(["::::", "\n"])
    assert shared_breaker_cache(VOCAB, tokenize) is shared_breaker_cache(VOCAB, tokenize)
