"""Prompt lookup across requests: the answers a loaded model gave lately, where a new answer that
repeats one of them (a retried or regenerated request, an agent re-applying an edit) finds its guesses."""

from __future__ import annotations

from collections.abc import Sequence

from .guesses import LongestMatch, tokens_only

__all__ = ["AnswerMemory"]

# A recalled guess comes from another request, so it needs a longer matching context than a guess from
# the sequence's own text: 8 tokens in a row rarely repeat by chance (llama-server's shared n-gram
# table, ngram-mod, keys on 24).
MIN_CONTEXT = 8
MAX_CONTEXT = 32
CAPACITY = 1 << 16  # tokens remembered; past it the older half is forgotten
_SEPARATOR = -1  # between answers: never matches a token (and cuts a guess like an image row)


class AnswerMemory:
    """The latest answers of one loaded model, each with the ``MAX_CONTEXT`` prompt tokens before it
    (so its start can be matched), for a sequence to look up its own latest tokens in.

    Only answers are kept: a prompt is looked up by its own sequence already, and the history a chat
    client re-sends every turn would fill the memory with copies. The memory only speeds drafting; a
    recalled guess is verified like any other, so it never changes an answer. Used from the batching
    loop's thread only.
    """

    __slots__ = ("capacity", "_tokens", "_index")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._tokens: list[int] = []
        self._index = LongestMatch(self._tokens, MIN_CONTEXT, MAX_CONTEXT)

    def __len__(self) -> int:
        return len(self._tokens)

    def remember(self, history: Sequence[int], answer_start: int) -> None:
        """Keep the answer ``history[answer_start:]`` with the prompt tokens just before it."""
        if answer_start >= len(history):
            return
        self._tokens.extend(history[max(0, answer_start - MAX_CONTEXT) :])
        self._tokens.append(_SEPARATOR)
        if len(self._tokens) > self.capacity:
            # Forget the older half at once: the index is rebuilt (lazily) once per half-capacity of
            # answers, not on every answer.
            keep = self._tokens[len(self._tokens) - self.capacity // 2 :]
            self._tokens = keep
            self._index = LongestMatch(self._tokens, MIN_CONTEXT, MAX_CONTEXT)

    def recall(self, query: Sequence[int], max_len: int) -> tuple[list[int], int]:
        """Up to ``max_len`` tokens that followed the remembered place matching ``query``'s end
        longest, and how many tokens matched; ``([], 0)`` when none matches ``MIN_CONTEXT`` tokens."""
        start, matched = self._index.best(query)
        if start < 0:
            return [], 0
        guess = tokens_only(self._tokens[start : start + max_len])
        return (guess, matched) if guess else ([], 0)
