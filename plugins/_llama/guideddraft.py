"""Speculative drafts under a JSON-schema constraint: prompt lookup cut to what the grammar allows,
and where it finds nothing, the text the grammar forces or a short-context lookup the grammar accepts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .guidance import Guide

__all__ = ["GuidedDrafter"]

SHORT_SIZES = (2, 1)  # context lengths of the fallback lookup: JSON's structure repeats after them
MAX_GUESS = 8  # tokens per guess of the grammar's own
RECORD_DECAY = 0.85  # as prompt lookup keeps its record (ngram.py): each settled guess counts 1
PRIOR_WEIGHT = 1.0  # one imaginary guess wrong from its first token: no drafts until guesses pay

Pick = Callable[[Sequence[float]], int]


class _Lookup(Protocol):
    def propose(self, limit: int, pick: Pick | None = None) -> list[int]: ...
    def extend(self, tokens: list[int]) -> None: ...


class _Constrained(Protocol):
    @property
    def guide(self) -> Guide | None: ...


class _Record:
    """How far one kind of guess tends to come true, checked against the tokens that follow whether
    or not it was drafted: ``gains[k]`` is the expected accepted tokens of a k-token draft."""

    __slots__ = ("_weights", "gains", "_open", "_matched")

    def __init__(self) -> None:
        self._weights = [0.0] * (MAX_GUESS + 1)
        self._weights[0] = PRIOR_WEIGHT
        self.gains = [0.0] * (MAX_GUESS + 1)
        self._open: list[int] = []
        self._matched = 0

    def open(self, guess: list[int]) -> None:
        if not self._open:
            self._open, self._matched = guess[:MAX_GUESS], 0

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            if not self._open:
                return
            if t == self._open[self._matched]:
                self._matched += 1
                if self._matched == len(self._open):
                    self._settle()
            else:
                self._settle()

    def _settle(self) -> None:
        w = self._weights
        for a in range(len(w)):
            w[a] *= RECORD_DECAY
        w[self._matched] += 1.0
        total = sum(w)
        at_least, gain = total, 0.0
        for k in range(1, len(w)):
            at_least -= w[k - 1]
            gain += at_least / total
            self.gains[k] = gain
        self._open, self._matched = [], 0


class GuidedDrafter:
    """A sequence's prompt-lookup drafter (``inner``) seen through its llguidance constraint.

    While the sampler holds a matcher (``sampler.guide``), a draft is cut where the grammar refuses
    it: a refused token could never be accepted, so its verification row would be wasted. Where
    lookup drafts nothing, the grammar guesses: the text it forces next (an object's next key),
    tokenized without its last token (which may merge with what follows), else the tokens that
    followed the latest occurrence of the last two or one tokens, as far as the grammar allows them
    (JSON repeats its punctuation and indentation after contexts too short for prompt lookup). Each
    kind keeps its own record, and ``pick`` (the step's cost model) decides how much of a guess is
    worth drafting, as for prompt lookup. Drafts only guess: verification samples every row through
    the constraint, so the output never changes. Everything else is the inner drafter's.
    """

    def __init__(self, inner: _Lookup, sampler: _Constrained, prompt: list[int],
                 tokenize: Callable[[bytes], list[int]]) -> None:
        self._inner = inner
        self._sampler = sampler
        self._tokenize = tokenize
        self._history = list(prompt)
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0
        self._forced_record = _Record()
        self._short_record = _Record()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def propose(self, limit: int, pick: Pick | None = None) -> list[int]:
        draft = self._inner.propose(limit, pick)
        guide = self._sampler.guide
        if guide is None or limit <= 0:
            return draft
        draft = draft[: guide.valid_prefix(draft)]
        if draft:
            return draft
        record, guess = self._forced_record, self._forced(guide)
        if not guess:
            record, guess = self._short_record, self._lookup(guide)
        if not guess:
            return []
        record.open(guess)
        n = min(limit, len(guess))
        k = n if pick is None else max(0, min(n, pick(record.gains[: n + 1])))
        return guess[:k]

    def extend(self, tokens: list[int]) -> None:
        self._history.extend(tokens)
        self._forced_record.extend(tokens)
        self._short_record.extend(tokens)
        self._inner.extend(tokens)

    def _forced(self, guide: Guide) -> list[int]:
        text = guide.forced_bytes()
        if not text:
            return []
        ids = self._tokenize(text)[:-1][:MAX_GUESS]  # the last token may merge with the text after it
        return ids[: guide.valid_prefix(ids)]

    def _lookup(self, guide: Guide) -> list[int]:
        h, idx = self._history, self._index
        end = len(h) - 1
        for i in range(self._indexed, end):  # every short context that ends before the last token
            for n in SHORT_SIZES:
                if i + 1 >= n:
                    idx[tuple(h[i + 1 - n : i + 1])] = i + 1
        self._indexed = max(self._indexed, end)
        for n in SHORT_SIZES:
            start = idx.get(tuple(h[len(h) - n :])) if len(h) >= n else None
            if start is None:
                continue
            guess = h[start : start + MAX_GUESS]
            if guess and min(guess) < 0:  # image or audio rows are never guessed
                guess = guess[: next(i for i, t in enumerate(guess) if t < 0)]
            guess = guess[: guide.valid_prefix(guess)]
            if guess:
                return guess
        return []
