"""Nothing heavy on the event loop: huge prompts (tokenized on a worker thread, or refused by their length before
any tokenizing) never hold up a running stream for more than a few of its own steps."""

from tests.integration.huge_prompts import gaps_while_huge_prompts_arrive

MB = 1_000_000


def test_huge_prompts_do_not_stall_a_running_stream(server):
    # 2 MB: more characters than the context can hold at the longest token's length, refused before tokenizing;
    # 0.4 MB: under that bound, tokenized (about half a second each) on a worker thread, then refused.
    gaps = gaps_while_huge_prompts_arrive(server.url, [2 * MB] * 5 + [MB * 4 // 10] * 2)
    assert gaps["statuses"] == [400] * 7
    # Before, each prompt was tokenized on the event loop: a gap of about 30 medians (bench/RESULTS.md).
    assert gaps["largest_gap_during_s"] <= 8 * gaps["median_gap_s"], gaps
