"""What speculative drafters share: indexes of a sequence's contexts (what followed each short one
last; where the longest match of its latest tokens is), and a record of how far a kind of guess tends
to come true."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ContextIndex", "GuessRecord", "LongestMatch", "follow", "tokens_only"]

# Each checked token of a guess counts 1, and what the record learned before decays by this factor with
# every new guess, so it follows the text: an answer that starts copying its input is noticed within a
# few guesses.
RECORD_DECAY = 0.85
# Before any guess has been checked the record holds one imaginary guess that was wrong from its first
# token: no drafting until a sequence's own guesses have shown that they pay.
PRIOR_WEIGHT = 1.0


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
