"""Prompt-lookup (n-gram) drafting for speculative decoding: one adaptive drafter per sequence."""

from __future__ import annotations

__all__ = ["NgramDrafter"]

# Longest n-gram first: a longer match predicts its continuation better; the shortest still finds
# the places where an answer starts copying its input.
NGRAM_SIZES = (4, 3)
MAX_DRAFT = 16  # tokens per draft by default (each costs a row of logits when it is verified)
FIRST_DRAFT = 4
COOLDOWN_START = 8  # tokens without drafting after drafts keep failing; doubles while they do
COOLDOWN_MAX = 512


class NgramDrafter:
    """Guesses a sequence's next tokens by finding the tokens that followed the last time its most
    recent n-gram appeared (in the prompt or the answer so far).

    Adaptive: the draft length doubles while whole drafts are accepted and drops to what was
    accepted when one is cut short; a sequence whose drafts are refused twice running stops drafting
    for a while, longer each time, so text that never repeats its context (plain chat) almost never
    pays for a verification.
    """

    __slots__ = ("history", "_index", "_indexed", "k", "max_k", "_misses", "_cooldown", "_resume",
                 "drafted", "accepted")

    def __init__(self, prompt: list[int], max_draft: int = MAX_DRAFT) -> None:
        self.history = list(prompt)
        # (n-gram) -> index of the token that followed its latest occurrence, for every occurrence
        # that ends before the last token (the last one is the n-gram being looked up)
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0
        self.max_k = max(1, max_draft)  # draft_num_predict, when the request's model sets it
        self.k = min(FIRST_DRAFT, self.max_k)
        self._misses = 0
        self._cooldown = COOLDOWN_START
        self._resume = 0  # len(history) from which drafting may start again
        self.drafted = 0
        self.accepted = 0
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
        """Tokens that joined the sequence (sampled, accepted)."""
        self.history.extend(tokens)

    def propose(self, limit: int) -> list[int]:
        """Up to ``min(k, limit)`` guessed next tokens (after the last one), or [] when there is no
        match or drafting is cooling down."""
        h = self.history
        if limit <= 0 or len(h) < self._resume:
            return []
        self._catch_up()
        want = min(self.k, limit)
        for n in NGRAM_SIZES:
            if len(h) < n:
                continue
            start = self._index.get(tuple(h[len(h) - n :]))
            if start is not None:
                draft = h[start : start + want]
                # Negative ids stand for image or audio rows in a prompt: never a token to guess.
                if draft and min(draft) < 0:
                    draft = draft[: next(i for i, t in enumerate(draft) if t < 0)]
                return draft
        return []

    def verified(self, drafted: int, accepted: int) -> None:
        """The outcome of verifying a draft of ``drafted`` tokens."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self.k = min(self.max_k, self.k * 2)
        else:
            self.k = min(self.max_k, max(2, accepted + 1))
        if accepted:
            self._misses = 0
            self._cooldown = COOLDOWN_START
            return
        self._misses += 1
        if self._misses >= 2:
            self._misses = 0
            self._resume = len(self.history) + self._cooldown
            self._cooldown = min(COOLDOWN_MAX, self._cooldown * 2)
