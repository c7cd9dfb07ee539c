"""Speculative drafts under a JSON-schema constraint: prompt lookup cut to what the grammar allows,
and where it finds nothing, the text the grammar forces or a short-context lookup the grammar accepts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .guesses import ContextIndex, GuessRecord
from .guidance import Guide
from .ngram import Pick, take

__all__ = ["GuidedDrafter"]

SHORT_SIZES = (2, 1)  # context lengths of the fallback lookup: JSON's structure repeats after them
MAX_GUESS = 8  # tokens per guess of the grammar's own


class _Lookup(Protocol):
    def offer(self, limit: int) -> tuple[list[int], list[float]]: ...
    def extend(self, tokens: list[int]) -> None: ...


class _Constrained(Protocol):
    @property
    def guide(self) -> Guide | None: ...


class GuidedDrafter:
    """A sequence's prompt-lookup drafter (``inner``) seen through its llguidance constraint.

    While the sampler holds a matcher (``sampler.guide``), a draft is cut where the grammar refuses
    it: a refused token could never be accepted, so its verification row would be wasted. Where
    lookup drafts nothing, the grammar guesses: the text it forces next (an object's next key),
    tokenized without its last token (which may merge with what follows), else the tokens that
    followed the latest occurrence of the last two or one tokens, as far as the grammar allows them
    (JSON repeats its punctuation and indentation after contexts too short for prompt lookup). Each
    kind keeps its own record, and the step's cost model decides how much of a guess is worth
    drafting, as for prompt lookup. Drafts only guess: verification samples every row through
    the constraint, so the output never changes. Everything else is the inner drafter's.
    """

    def __init__(self, inner: _Lookup, sampler: _Constrained, prompt: list[int],
                 tokenize: Callable[[bytes], list[int]]) -> None:
        self._inner = inner
        self._sampler = sampler
        self._tokenize = tokenize
        self._history = list(prompt)
        self._contexts = ContextIndex(self._history, SHORT_SIZES)
        self._forced_record = GuessRecord(MAX_GUESS)
        self._short_record = GuessRecord(MAX_GUESS)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def offer(self, limit: int) -> tuple[list[int], list[float]]:
        """The guess to draft from (cut where the grammar refuses it) and its expected accepted tokens
        per draft length, as ``NgramDrafter.offer``: prompt lookup's guess where the grammar allows some
        of it and it has been coming true, else the grammar's own guess, else lookup's."""
        guess, gains = self._inner.offer(limit)
        guide = self._sampler.guide
        if guide is None or limit <= 0:
            return guess, gains
        n = guide.valid_prefix(guess)
        guess, gains = guess[:n], gains[: n + 1] if n else []
        if guess and gains[-1] > 0:
            return guess, gains
        record, own = self._forced_record, self._forced(guide)
        if not own:
            record, own = self._short_record, self._lookup(guide)
        if not own:
            return guess, gains
        record.open(own)
        own = own[:limit]
        return own, record.gains[: len(own) + 1]

    def propose(self, limit: int, pick: Pick | None = None) -> list[int]:
        """The tokens to draft now, as ``NgramDrafter.propose``."""
        return take(self.offer(limit), pick)

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
        for guess in self._contexts.continuations(MAX_GUESS):
            guess = guess[: guide.valid_prefix(guess)]
            if guess:
                return guess
        return []
