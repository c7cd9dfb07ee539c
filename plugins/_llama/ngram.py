"""Prompt-lookup (n-gram) drafting for speculative decoding: one drafter per sequence, which keeps a
record of how far its guesses would have been right."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["NgramDrafter"]

# Longest n-gram first: a longer match predicts its continuation better; the shortest still finds
# the places where an answer starts copying its input.
NGRAM_SIZES = (4, 3)
MAX_DRAFT = 16  # tokens per draft by default (each costs a row of logits when it is verified)
# Each finished guess counts 1 and the record decays by this factor per guess, so it follows the
# text: an answer that starts copying its input is noticed within a few guesses.
RECORD_DECAY = 0.85
# Before any guess has been checked the record holds one imaginary guess that was wrong from its
# first token: no drafting until the sequence's own guesses have shown that they pay.
PRIOR_WEIGHT = 1.0

# Given E[k] = the expected number of accepted tokens if a draft of k tokens is verified (E[0] = 0),
# the number of tokens worth drafting.
Pick = Callable[[Sequence[float]], int]


class NgramDrafter:
    """Guesses a sequence's next tokens by finding the tokens that followed the last time its most
    recent n-gram appeared (in the prompt or the answer so far).

    Every guess is checked against the tokens that really follow, whether or not it was drafted (a
    guess that is not drafted costs nothing to check), so the drafter knows how many tokens of a guess
    the model would accept before it pays for a verification: text that never repeats its context
    (plain chat) is never drafted, and copying text is drafted as far as it tends to hold. How far is
    worth its cost is the caller's choice (``pick``): it knows what a row of logits costs.
    """

    __slots__ = ("history", "_index", "_indexed", "max_k", "_weights", "_gains", "_open", "_matched")

    def __init__(self, prompt: list[int], max_draft: int = MAX_DRAFT) -> None:
        self.history = list(prompt)
        # (n-gram) -> index of the token that followed its latest occurrence, for every occurrence
        # that ends before the last token (the last one is the n-gram being looked up)
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0
        self.max_k = max(1, max_draft)  # draft_num_predict, when the request's model sets it
        # _weights[a]: decayed count of guesses whose first ``a`` tokens came true (and no more)
        self._weights = [0.0] * (self.max_k + 1)
        self._weights[0] = PRIOR_WEIGHT
        self._gains = [0.0] * (self.max_k + 1)
        self._open: list[int] = []  # the guess being checked against the tokens that follow
        self._matched = 0  # how many of its tokens came true so far
        self._catch_up()

    def _catch_up(self) -> None:
        """Index every n-gram that ends before the last token."""
        h, idx = self.history, self._index
        end = len(h) - 1
        for i in range(self._indexed, end):
            for n in NGRAM_SIZES:
                if i + 1 >= n:
                    idx[tuple(h[i + 1 - n : i + 1])] = i + 1
        self._indexed = max(self._indexed, end)

    def extend(self, tokens: list[int]) -> None:
        """Tokens that joined the sequence (sampled, accepted): they settle the open guess."""
        self.history.extend(tokens)
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
        # gains[k] = sum over j <= k of P(at least j tokens come true)
        at_least, gain = total, 0.0
        for k in range(1, len(w)):
            at_least -= w[k - 1]
            gain += at_least / total
            self._gains[k] = gain
        self._open, self._matched = [], 0

    def guess(self) -> list[int]:
        """Up to ``max_k`` tokens guessed to follow the last one, or [] when no n-gram matches."""
        h = self.history
        self._catch_up()
        for n in NGRAM_SIZES:
            if len(h) < n:
                continue
            start = self._index.get(tuple(h[len(h) - n :]))
            if start is not None:
                draft = h[start : start + self.max_k]
                # Negative ids stand for image or audio rows in a prompt: never a token to guess.
                if draft and min(draft) < 0:
                    draft = draft[: next(i for i, t in enumerate(draft) if t < 0)]
                return draft
        return []

    def propose(self, limit: int, pick: Pick | None = None) -> list[int]:
        """The tokens to draft now: the first ``k`` of the current guess, where ``pick`` chooses ``k``
        from the expected accepted tokens per draft length (without ``pick``: the whole guess), and
        never more than ``limit``. The guess is checked against what follows either way."""
        if limit <= 0:
            return []
        g = self.guess()
        if g and not self._open:
            self._open = g
        if not g:
            return []
        n = min(limit, len(g))
        k = n if pick is None else max(0, min(n, pick(self._gains[: n + 1])))
        return g[:k]

    def expected(self, k: int) -> float:
        """Expected accepted tokens of a k-token draft, from the record so far."""
        return self._gains[max(0, min(k, self.max_k))]
