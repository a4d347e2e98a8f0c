import pytest

from server.engine.text.stops import StopMatcher, StopScan, scan_for_stops


def feed(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    """What a client receives, piece by piece, and whether a stop matched."""
    matcher = StopMatcher(stops)
    released = []
    for piece in pieces:
        scan = matcher.push(piece)
        released.append(scan.release)
        if scan.stopped:
            return released, True
    released.append(matcher.flush())
    return released, False


def test_text_without_stop_prefix_is_released_at_once():
    assert scan_for_stops("Hello there", ["::::"]) == StopScan(release="Hello there", held="", stopped=False)


def test_stop_inside_one_piece_cuts_before_it():
    assert scan_for_stops('"Hi."\n\n::::user:', ["::::"]) == StopScan(
        release='"Hi."\n\n', held="", stopped=True, stop="::::"
    )


def test_stop_split_across_pieces_never_leaks():
    assert feed(["Well", ":", ":", "::", "user"], ["::::"]) == (["Well", "", "", ""], True)


def test_partial_match_released_once_it_cannot_be_a_stop():
    assert feed(["Ratio 3", ":", ":", "1 done"], ["::::"]) == (["Ratio 3", "", "", "::1 done", ""], False)


def test_stop_at_the_very_end_of_a_piece():
    assert feed(["He said", " END"], [" END"]) == (["He said", ""], True)


def test_held_prefix_is_released_when_generation_ends_otherwise():
    assert feed(["and then::"], ["::::"]) == (["and then", "::"], False)


def test_overlapping_stops_cut_at_the_earliest_start():
    assert scan_for_stops("abcdef", ["cdef", "bc"]).release == "a"
    assert feed(["xx a", "b", "cd"], ["abcd", "bc"]) == (["xx ", "", ""], True)
    assert feed(["xx a", "b", "cX"], ["abcd", "bc"]) == (["xx ", "", "a"], True)


def test_longest_possible_prefix_is_held():
    # "aab" could still become "aabx"; the tail "ab" alone is a prefix of "abz" too: hold the longer one.
    assert scan_for_stops("q aab", ["aabx", "abz"]) == StopScan(release="q ", held="aab", stopped=False)


def test_stop_made_of_one_multibyte_character():
    assert feed(["caf", "é au lait"], ["é"]) == (["caf", ""], True)


@pytest.mark.parametrize("stops", [[], [""]])
def test_no_stops_releases_everything(stops):
    assert feed(["a:", ":"], stops) == (["a:", ":", ""], False)


def test_turn_stop_lets_earlier_matches_through():
    matcher = StopMatcher([], turn_stops=["\n\n::::", "::::"], turns=3)
    pieces = [' "Hi."', "\n\n::", "::user:Anon: Yo", "\n\n::::", "assistant:B: ok", "::", "::"]
    released = [matcher.push(piece) for piece in pieces]
    assert "".join(scan.release for scan in released) == ' "Hi."\n\n::::user:Anon: Yo\n\n::::assistant:B: ok'
    assert [scan.stopped for scan in released] == [False] * 6 + [True]


@pytest.mark.parametrize(
    ("pieces", "released", "stop"),
    [
        # The model's next label is a user-side one: the longer stop wins where the turn stop matched first.
        (["Hi.", "\n\n::", "::", "us", "er:Anon: hey"], "Hi.", "\n\n::::user:"),
        (["Hi.\n\n::::", "assistant:B: ok", "\n\n::::user: (OOC"], "Hi.\n\n::::assistant:B: ok", "\n\n::::user:"),
        (["Hi.::::user:Eve: x"], "Hi.", "::::user:"),
        # An assistant-side label is only a turn stop: it is let through once it can no longer be the other.
        (["Hi.\n\n::::", "assist", "ant:B: ok\n\n::::"], "Hi.\n\n::::assistant:B: ok", "\n\n::::"),
    ],
)
def test_a_longer_stop_beginning_where_a_turn_stop_matched_wins(pieces, released, stop):
    matcher = StopMatcher(["\n\n::::user:", "::::user:"], turn_stops=["\n\n::::", "::::"], turns=2)
    scans = [matcher.push(piece) for piece in pieces]
    assert "".join(scan.release for scan in scans) == released
    assert (scans[-1].stopped, scans[-1].stop) == (True, stop)


def test_client_stop_ends_at_once_even_with_turns_left():
    matcher = StopMatcher(["END"], turn_stops=["::::"], turns=5)
    assert matcher.push("a::::b END c") == StopScan(release="a::::b ", held="", stopped=True, stop="END")


def test_earliest_stop_wins_and_reports_which():
    scan = scan_for_stops("ab\n\n::::c", ["::::", "\n\n::::"])
    assert (scan.release, scan.stop) == ("ab", "\n\n::::")


def test_banned_string_is_held_then_reported_where_it_starts():
    matcher = StopMatcher(["::::"], banned=["shiver"])
    assert matcher.push("A shi") == StopScan(release="A ", held="shi", stopped=False)
    scan = matcher.push("ver ran")
    assert (scan.release, scan.stopped, scan.banned_at, scan.stop) == ("", False, 2, "shiver")


def test_checkpoint_and_restore():
    matcher = StopMatcher([], banned=["xyz"])
    matcher.push("ab")
    saved = matcher.checkpoint()
    assert matcher.push("xy").release == ""
    assert matcher.push("z").banned_at == 2
    matcher.restore(saved)
    assert matcher.push("q").release == "q"
    assert matcher.position == 3
