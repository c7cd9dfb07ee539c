"""Prompt-lookup (n-gram) drafting for speculative decoding: one drafter per sequence, which keeps a
record of how far its guesses would have been right."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .guesses import OWN, RECALLED, GuessChecks, GuessStats, LongestMatch, follow
from .recall import AnswerMemory

__all__ = ["NgramDrafter", "Pick", "take"]

# A guess follows the place whose context matches the latest tokens longest (up to MAX_CONTEXT
# tokens): a longer match predicts its continuation better. MIN_CONTEXT tokens must match: fewer still
# find where an answer starts copying its input, but too often by chance.
MIN_CONTEXT, MAX_CONTEXT = 3, 32
# Tokens per draft by default (each costs a row of logits when it is verified; the step's cost model
# decides how many are worth it): as llama-server's ngram-mod, since on some CPUs a step of 64 rows
# yields 1.6x the rows per second of one of 16.
MAX_DRAFT = 64

# Given E[k] = the expected number of accepted tokens if a draft of k tokens is verified (E[0] = 0),
# the number of tokens worth drafting.
Pick = Callable[[Sequence[float]], int]


def take(offer: tuple[list[int], list[float]], pick: Pick | None) -> list[int]:
    """The first ``k`` tokens of an offered guess, where ``pick`` chooses ``k`` from its expected
    accepted tokens per draft length (without ``pick``: the whole guess)."""
    guess, gains = offer
    k = len(guess) if pick is None or not guess else max(0, min(len(guess), pick(gains)))
    return guess[:k]


class NgramDrafter:
    """Guesses a sequence's next tokens by finding the tokens that followed the earlier place (in the
    prompt or the answer so far) whose context matches its latest tokens longest, or what followed the
    longest match in the model's ``memory`` of recent answers, whichever kind of guess is expected to
    come true further (the longer match while neither has shown anything yet).

    Every guess is checked against the tokens that really follow, whether or not it was drafted, into
    ``stats`` (the model's, shared by its sequences: ``GuessStats``), so the drafter knows how many
    tokens of a guess the model would accept before it pays for a verification: text that never
    repeats its context (plain chat) is never drafted, and copying text is drafted as far as it tends
    to hold, the further the longer the streak of tokens guessed right before it. Guesses from the
    sequence's own text and recalled ones are told apart: a repeated request's answer follows the
    remembered one far past the point where its own lookup goes wrong. How far is worth its cost is
    the caller's choice (``pick``): it knows what a row of logits costs.
    """

    __slots__ = ("history", "max_k", "_contexts", "_checks", "_memory", "_prompt_len", "_streak",
                 "_chosen")

    def __init__(self, prompt: list[int], max_draft: int = MAX_DRAFT,
                 memory: AnswerMemory | None = None, stats: GuessStats | None = None) -> None:
        self.history = list(prompt)
        self.max_k = max(1, max_draft)  # draft_num_predict, when the request's model sets it
        self._contexts = LongestMatch(self.history, MIN_CONTEXT, MAX_CONTEXT)
        self._checks = GuessChecks(self.history, stats if stats is not None else GuessStats(self.max_k))
        self._memory = memory
        self._prompt_len = len(prompt)
        self._streak = 0  # tokens in a row that the guess offered before them predicted
        self._chosen: list[int] = []  # the guess offered last

    def extend(self, tokens: list[int]) -> None:
        """Tokens that joined the sequence (sampled, accepted): they settle the open guesses."""
        guess, n = self._chosen, 0
        while n < len(tokens) and n < len(guess) and tokens[n] == guess[n]:
            n += 1
        self._streak = self._streak + n if n == len(tokens) else 0
        self._chosen = []
        self.history.extend(tokens)
        self._checks.check()

    def finish(self) -> None:
        """The sequence ended: its answer joins the model's memory for later requests."""
        if self._memory is not None:
            self._memory.remember(self.history, self._prompt_len)

    def _guess(self, check: bool) -> tuple[list[int], int]:
        """The guess to draft from and the key of its kind and streak in the stats. With ``check``,
        both kinds of guess are followed and checked against what follows."""
        stats = self._checks.stats
        start, matched = self._contexts.best(self.history)
        own = follow(self.history, start, self.max_k) if start >= 0 else []
        mine = stats.key(OWN, self._streak)
        if check:
            self._checks.open(mine, own)
        if self._memory is not None:
            recalled, recalled_matched = self._memory.recall(self.history, self.max_k)
            if recalled:
                theirs = stats.key(RECALLED, self._streak)
                if check:
                    self._checks.open(theirs, recalled)
                # the kind expected to come true further, else the longer match
                expect_mine = stats.expect(mine, len(own)) if own else -1.0
                expect_theirs = stats.expect(theirs, len(recalled))
                if expect_theirs > expect_mine or (
                        expect_theirs == expect_mine and recalled_matched > matched):
                    return recalled, theirs
        return own, mine

    def guess(self) -> list[int]:
        """Up to ``max_k`` tokens guessed to follow the last one, or [] when its context never occurred."""
        return self._guess(check=False)[0]

    def offer(self, limit: int) -> tuple[list[int], list[float]]:
        """The current guess, at most ``limit`` tokens, and the expected accepted tokens of each draft
        length of it (``gains[k]`` for a k-token draft); the guess is checked against what follows
        whether or not any of it is drafted."""
        if limit <= 0:
            return [], []
        g, key = self._guess(check=True)
        self._chosen = g
        g = g[:limit]
        return g, self._checks.stats.gains(key)[: len(g) + 1] if g else []

    def propose(self, limit: int, pick: Pick | None = None) -> list[int]:
        """The tokens to draft now: the first ``k`` of the current guess, where ``pick`` chooses ``k``
        from the expected accepted tokens per draft length (without ``pick``: the whole guess), and
        never more than ``limit``."""
        return take(self.offer(limit), pick)

    def expected(self, k: int) -> float:
        """Expected accepted tokens of a k-token draft of the sequence's own text at its streak now."""
        stats = self._checks.stats
        return stats.expect(stats.key(OWN, self._streak), k)
