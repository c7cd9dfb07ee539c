"""What speculative drafters share: indexes of a sequence's contexts (what followed each short one
last; where the longest match of its latest tokens is), and records of how far a kind of guess tends
to come true."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["OWN", "RECALLED", "ContextIndex", "GuessChecks", "GuessRecord", "GuessStats", "LongestMatch",
           "follow", "tokens_only"]

# Each checked token of a guess counts 1, and what the record learned before decays by this factor with
# every new guess, so it follows the text: an answer that starts copying its input is noticed within a
# few guesses.
RECORD_DECAY = 0.85
# Before any guess has been checked the record holds one imaginary guess that was wrong from its first
# token: no drafting until a sequence's own guesses have shown that they pay.
PRIOR_WEIGHT = 1.0

# GuessStats tells guesses apart by the streak they are made in: how many tokens in a row just before
# the guess the guess before them had predicted. On gemma3:270m's answers (the edit and chat workloads of
# bench/speculative.py) a guess made right after a miss came true at its first token about a third of
# the time, one made 1-15 tokens into a streak 94-97% of the time, one made 16 or more tokens in 98-100%
# (and from 64 tokens in, 61% held for all 63 tokens): what one record would average out.
STREAKS = (1, 16)  # where the buckets of streak lengths start after the first (no streak)
# Per guess opened of the same kind and streak, what the stats learned before decays by this factor:
# about the last hundred guesses count, so the stats follow what the model is writing now.
STATS_DECAY = 0.99
OWN, RECALLED = 0, 1  # kinds of guess: lookup in the sequence's own text, recall of an earlier answer


def tokens_only(guess: list[int]) -> list[int]:
    """``guess`` up to its first negative id: those stand for image or audio rows in a prompt, never a
    token to guess."""
    if guess and min(guess) < 0:
        return guess[: next(i for i, t in enumerate(guess) if t < 0)]
    return guess


def follow(history: list[int], start: int, n: int) -> list[int]:
    """Up to ``n`` tokens read from ``history[start:]`` and, past its end, from what was read: a
    sequence caught in a loop of P tokens repeats the loop, not only the P tokens still ahead of
    ``start``. Cut at the first image or audio row."""
    out = history[start : start + n]
    behind = len(history) - start  # the loop's period, once the history runs out
    while 0 < behind and len(out) < n:
        out.extend(out[len(out) - behind : len(out) - behind + n - len(out)])
    return tokens_only(out)


class ContextIndex:
    """For each context of ``sizes`` tokens (longest first) in ``history``, where the token that
    followed its latest occurrence is; the history only grows (the owner appends to it)."""

    __slots__ = ("history", "sizes", "_index", "_indexed")

    def __init__(self, history: list[int], sizes: tuple[int, ...]) -> None:
        self.history = history
        self.sizes = sizes
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0

    def _catch_up(self) -> None:
        """Index every context that ends before the last token (the last one is being looked up)."""
        h, idx = self.history, self._index
        end = len(h) - 1
        for i in range(self._indexed, end):
            for n in self.sizes:
                if i + 1 >= n:
                    idx[tuple(h[i + 1 - n : i + 1])] = i + 1
        self._indexed = max(self._indexed, end)

    def continuations(self, max_len: int) -> list[list[int]]:
        """Up to ``max_len`` tokens that followed the latest earlier occurrence of the history's last
        context, one list per context size that matches (longest first)."""
        self._catch_up()
        h = self.history
        found: list[list[int]] = []
        for n in self.sizes:
            start = self._index.get(tuple(h[len(h) - n :])) if len(h) >= n else None
            if start is None:
                continue
            guess = tokens_only(h[start : start + max_len])
            if guess:
                found.append(guess)
        return found


class LongestMatch:
    """Where the history's latest tokens occurred before with the longest matching context: every
    earlier occurrence of its last ``min_len`` tokens (the latest ``CANDIDATES`` of them) is compared
    backwards, up to ``max_len`` tokens, and the longest match wins, the latest among equals. In a copy
    the longest match is the place being copied; in text that repeats itself it is the right turn of
    the loop, where the latest occurrence of a short context is often the wrong one."""

    __slots__ = ("history", "min_len", "max_len", "_index", "_indexed")

    CANDIDATES = 32  # occurrences compared per lookup: bounded work on text that repeats a lot

    def __init__(self, history: list[int], min_len: int, max_len: int) -> None:
        self.history = history
        self.min_len, self.max_len = min_len, max(min_len, max_len)
        self._index: dict[tuple[int, ...], list[int]] = {}  # context -> where the token after it is
        self._indexed = 0

    def _catch_up(self) -> None:
        """Index every context that ends before the last token (the last one is being looked up)."""
        h, idx, n = self.history, self._index, self.min_len
        end = len(h) - 1
        for i in range(max(self._indexed, n - 1), end):
            key = tuple(h[i + 1 - n : i + 1])
            at = idx.get(key)
            if at is None:
                idx[key] = [i + 1]
            else:
                at.append(i + 1)
        self._indexed = max(self._indexed, end)

    def best(self, query: Sequence[int]) -> tuple[int, int]:
        """Where the tokens after the best earlier match of ``query``'s end start in the history, and
        how many tokens matched: ``(-1, 0)`` when not even the last ``min_len`` tokens occurred. (The
        query is the history itself, or another sequence's tokens; image rows never extend a match.)"""
        self._catch_up()
        h, n = self.history, self.min_len
        at = self._index.get(tuple(query[len(query) - n :])) if len(query) >= n else None
        if not at:
            return -1, 0
        best, best_len, last = at[-1], -1, len(query) - 1
        for start in reversed(at[-self.CANDIDATES :]):
            k = n
            while (k < self.max_len and start - 1 - k >= 0 and k <= last
                   and h[start - 1 - k] == query[last - k] and query[last - k] >= 0):
                k += 1
            if k > best_len:
                best, best_len = start, k
                if k == self.max_len:
                    break
        return best, best_len


class GuessRecord:
    """How far one kind of guess comes true, checked against the tokens that really follow whether or
    not it was drafted (a guess that is not drafted costs nothing to check): ``gains[k]`` is the
    expected number of accepted tokens of a k-token draft (``gains[0]`` is 0).

    The record counts, for each position of a guess, how often the guess's token there came true and
    how often it was the first one wrong, and learns from each token as it is checked: a long guess
    that keeps coming true is worth drafting long before it ends (a 64-token guess would otherwise
    teach nothing for 64 tokens). A position no guess has reached yet is not expected to come true.
    """

    __slots__ = ("_passed", "_failed", "gains", "_open", "_matched")

    def __init__(self, max_len: int) -> None:
        # _passed[i] / _failed[i]: decayed counts of guesses whose token at position i (0-based) came
        # true / was the first one wrong
        self._passed = [0.0] * max_len
        self._failed = [0.0] * max_len
        self._failed[0] = PRIOR_WEIGHT
        self.gains = [0.0] * (max_len + 1)
        self._open: list[int] = []  # the guess being checked against the tokens that follow
        self._matched = 0  # how many of its tokens came true so far

    def open(self, guess: list[int]) -> None:
        """Follow ``guess`` unless one is still being followed; older guesses weigh less from now on."""
        if not self._open and guess:
            self._open, self._matched = guess[: len(self._passed)], 0
            for counts in (self._passed, self._failed):
                for i in range(len(counts)):
                    counts[i] *= RECORD_DECAY

    def extend(self, tokens: list[int]) -> None:
        """Tokens that joined the sequence: each one checks the open guess's next token."""
        if not self._open or not tokens:
            return
        settled = False
        for t in tokens:
            if t != self._open[self._matched]:
                self._failed[self._matched] += 1.0
                settled = True
                break
            self._passed[self._matched] += 1.0
            self._matched += 1
            if self._matched == len(self._open):
                settled = True
                break
        if settled:
            self._open, self._matched = [], 0
        self._update()

    def _update(self) -> None:
        # gains[k] = sum over j <= k of P(at least j tokens come true) = P(each of the first j did)
        # (on the per-token path: past the first position where none came true, the gains stay put)
        surviving, gain = 1.0, 0.0
        for i, (passed, failed) in enumerate(zip(self._passed, self._failed, strict=True)):
            if passed <= 0.0:
                self.gains[i + 1 :] = [gain] * (len(self.gains) - 1 - i)
                return
            surviving *= passed / (passed + failed)
            gain += surviving
            self.gains[i + 1] = gain


class GuessStats:
    """How far guesses come true, by kind (``OWN``, ``RECALLED``) and by the streak they are made in,
    learned from every guess of the sequences that share it (a loaded model's) as their tokens are
    checked against what really follows, whether or not they were drafted.

    For each position i of a guess it counts the guesses whose tokens before i came true and whose
    token i was checked, and how many of those were wrong there; the chance that token i comes true
    once those before it did is one minus their ratio (a guess still being followed counts as far as
    it was checked). ``gains(key)[k]`` is the expected number of accepted tokens of a k-token draft.
    A position no guess has reached is not expected to come true, and before any guess each key holds
    one imaginary guess wrong from its first token: nothing is drafted until guesses have been seen
    to pay. Used from one thread (the batching loop's).
    """

    __slots__ = ("max_len", "_reached", "_wrong", "_gains")

    def __init__(self, max_len: int) -> None:
        self.max_len = max(1, max_len)
        keys = 2 * (len(STREAKS) + 1)
        self._reached = [[0.0] * self.max_len for _ in range(keys)]
        self._wrong = [[0.0] * self.max_len for _ in range(keys)]
        for reached, wrong in zip(self._reached, self._wrong, strict=True):
            reached[0] = wrong[0] = PRIOR_WEIGHT
        self._gains: list[list[float] | None] = [None] * keys

    @staticmethod
    def key(kind: int, streak: int) -> int:
        """The key of a guess of ``kind`` made ``streak`` tokens into a streak."""
        return kind * (len(STREAKS) + 1) + bisect.bisect_right(STREAKS, streak)

    def opened(self, key: int) -> None:
        """A guess of ``key`` is being followed: what the key learned before weighs less from now on."""
        for counts in (self._reached[key], self._wrong[key]):
            for i in range(len(counts)):
                counts[i] *= STATS_DECAY
        self._gains[key] = None

    def checked(self, key: int, position: int, right: bool) -> None:
        """The token at ``position`` (0-based) of a guess of ``key`` was checked: ``right`` or not."""
        self._reached[key][position] += 1.0
        if not right:
            self._wrong[key][position] += 1.0
        self._gains[key] = None

    def expect(self, key: int, k: int) -> float:
        """Expected accepted tokens of a k-token draft of a guess of ``key``."""
        return self.gains(key)[max(0, min(k, self.max_len))]

    def gains(self, key: int) -> list[float]:
        """Expected accepted tokens of a k-token draft of a guess of ``key``, for k = 0..max_len."""
        gains = self._gains[key]
        if gains is None:
            gains = [0.0]
            surviving = 1.0
            for reached, wrong in zip(self._reached[key], self._wrong[key], strict=True):
                if reached <= wrong:  # never reached, or never right there: the gains stay put
                    break
                surviving *= 1.0 - wrong / reached
                gains.append(gains[-1] + surviving)
            gains.extend([gains[-1]] * (self.max_len + 1 - len(gains)))
            self._gains[key] = gains
        return gains


class GuessChecks:
    """One sequence's guesses being followed in ``stats``: each is checked against the tokens of
    ``history`` that follow it, one token at a time, until one is wrong or the guess ends."""

    __slots__ = ("history", "stats", "_open")

    def __init__(self, history: list[int], stats: GuessStats) -> None:
        self.history = history
        self.stats = stats
        self._open: list[tuple[int, list[int], int, int]] = []  # (key, guess, where it starts, checked)

    def open(self, key: int, guess: list[int]) -> None:
        """Follow ``guess``, made for the tokens after the history's end."""
        if guess:
            self.stats.opened(key)
            self._open.append((key, guess[: self.stats.max_len], len(self.history), 0))

    def check(self) -> None:
        """Check the followed guesses against the tokens that joined the history."""
        h, stats, end = self.history, self.stats, len(self.history)
        still = []
        for key, guess, at, i in self._open:
            settled = False
            while at + i < end:
                right = h[at + i] == guess[i]
                stats.checked(key, i, right)
                i += 1
                if not right or i == len(guess):
                    settled = True
                    break
            if not settled:
                still.append((key, guess, at, i))
        self._open = still
