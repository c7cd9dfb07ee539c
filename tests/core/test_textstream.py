"""Tests for corral.textstream: UTF-8 piece decoding and stop-string hold-back."""

from __future__ import annotations

import random

import pytest

from corral.textstream import StopMatcher, Utf8Decoder


def test_ascii_passes_straight_through() -> None:
    d = Utf8Decoder()
    assert d.feed(b"hello") == "hello"
    assert d.feed(b" world") == " world"
    assert d.flush() == ""


@pytest.mark.parametrize("text", ["héllo 世界 🙂", "🙂🙂", "ß", "世"])
def test_multibyte_split_at_every_byte(text: str) -> None:
    data = text.encode()
    d = Utf8Decoder()
    pieces = [d.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(pieces) + d.flush() == text
    # no piece ever contains half a character (each is valid on its own)
    for p in pieces:
        assert "\ufffd" not in p


def test_emoji_held_until_complete() -> None:
    d = Utf8Decoder()
    emoji = "🙂".encode()
    assert d.feed(emoji[:2]) == ""
    assert d.pending
    assert d.feed(emoji[2:3]) == ""
    assert d.feed(emoji[3:] + b"!") == "🙂!"
    assert not d.pending


def test_invalid_bytes_become_replacement_char() -> None:
    d = Utf8Decoder()
    assert d.feed(b"a\xffb") == "a\ufffdb"
    assert d.feed(b"\xc3") == ""  # start of a 2-byte char
    assert d.feed(b"(") == "\ufffd("  # not a continuation byte
    assert d.feed(b"\xe4\xb8") == ""
    assert d.flush() == "\ufffd"  # unfinished at the end
    assert d.feed(b"ok") == "ok"  # usable again after flush


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    d = Utf8Decoder()
    for _ in range(500):
        d.feed(bytes(rng.randrange(256) for _ in range(rng.randrange(5))))
    d.flush()


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    m = StopMatcher(stops)
    out: list[str] = []
    stopped = False
    for p in pieces:
        emit, stopped = m.feed(p)
        out.append(emit)
        if stopped:
            break
    tail = m.flush()
    return "".join(out) + tail, stopped, out


def test_no_stops_passes_through() -> None:
    m = StopMatcher([])
    assert m.feed("abc") == ("abc", False)
    assert m.flush() == ""


def test_stop_inside_one_piece() -> None:
    text, stopped, _ = run(["END"], ["hello END world"])
    assert (text, stopped) == ("hello ", True)


def test_stop_spanning_several_feeds() -> None:
    text, stopped, pieces = run(["<|end|>"], ["Hi", " <", "|e", "nd", "|>", " more"])
    assert (text, stopped) == ("Hi ", True)
    # the partial "<", "<|e" ... were held back, never emitted early
    assert pieces[1] == " "
    assert pieces[2] == ""


def test_false_alarm_is_released() -> None:
    text, stopped, pieces = run(["</s>"], ["a<", "/b", "c"])
    assert (text, stopped) == ("a</bc", False)
    assert pieces[0] == "a"  # "<" held
    assert pieces[1] == "</b"


def test_held_tail_released_by_flush() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("go ST") == ("go ", False)
    assert m.held == "ST"
    assert m.flush() == "ST"


def test_nothing_after_stop() -> None:
    m = StopMatcher(["x"])
    assert m.feed("abxcd") == ("ab", True)
    assert m.matched == "x"
    assert m.feed("more") == ("", True)
    assert m.flush() == ""


def test_earliest_of_several_stops_wins() -> None:
    text, stopped, _ = run(["world", "lo w"], ["hello world"])
    assert (text, stopped) == ("hel", True)


def test_overlapping_prefix_holdback() -> None:
    # "aab" ends in "aa", a prefix of "aaa" -> hold two chars
    m = StopMatcher(["aaa"])
    assert m.feed("baa") == ("b", False)
    assert m.feed("b") == ("aab", False)
    assert m.feed("aa") == ("", False)
    assert m.feed("a") == ("", True)


def test_multibyte_stop_string() -> None:
    text, stopped, _ = run(["世界"], ["你好", "世", "界!"])
    assert (text, stopped) == ("你好", True)


def test_empty_stop_strings_ignored() -> None:
    m = StopMatcher(["", "Z"])
    assert m.feed("abc") == ("abc", False)


def test_random_split_matches_reference() -> None:
    rng = random.Random(3)
    alphabet = "ab<>/"
    stops = ["</a>", "bb"]
    for _ in range(300):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(20)))
        cuts = sorted(rng.sample(range(len(s) + 1), k=min(len(s) + 1, 4)))
        pieces = [s[i:j] for i, j in zip([0, *cuts], [*cuts, len(s)], strict=True)]
        idx = [i for i in (s.find(t) for t in stops) if i >= 0]
        expect = s[: min(idx)] if idx else s
        text, stopped, _ = run(stops, pieces)
        assert text == expect, (s, pieces)
        assert stopped == bool(idx)
