"""What each row of a decode step costs, learned from the batching loop's own steps, and how many
drafted tokens a step can afford: speculation only where it is expected to pay."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

__all__ = ["DraftBudget", "RowCosts"]

# A draft must promise at least this much more throughput than the step without it: a guess that
# only breaks even is not worth the risk of a noisy estimate.
MIN_GAIN = 1.03
LEARN_RATE = 0.3
# A step size not seen for this many steps is forgotten, so an estimate taken while the machine was
# busy does not keep speculation off once it is quiet again (it is measured afresh when tried).
FORGET_AFTER_STEPS = 2000


class RowCosts:
    """Moving averages of a decode-only step's wall time by its number of rows (tokens with logits).

    On a GPU an extra row is nearly free; on two CPU cores with a 262k vocabulary one costs almost as
    much as a whole step, so the same draft can double a stream's speed on one machine and slow it on
    another. Costs are not a line either: on x86 the quantized matrix kernels work in tiles of four
    rows, so 8 rows can cost less than 7, and 17 a third more than 16.

    So sizes are measured in doublings (1, 2, 4, 8, 16 rows for one sequence), which land on the cheap
    tiles: past the largest measured size only twice that size is priced, from the cost per row since
    the size it doubled or ``prior_slope`` (the learned cost of one prompt token), whichever is less,
    and sizes between two measured ones are priced on the line through them. One draft tried on that
    word measures the next size; no size is tried just because it was never seen.
    """

    __slots__ = ("_t", "_seen", "_samples", "_guessed", "_keys", "_step", "prior_slope")

    def __init__(self, prior_slope: Callable[[], float]) -> None:
        self._t: dict[int, float] = {}
        self._seen: dict[int, int] = {}
        self._samples: dict[int, int] = {}
        # What a size was priced at before its first step: that step may be slow for reasons of its
        # own (below) and must not price a good size out for good, so until a second step measures it
        # a size costs the less of the two.
        self._guessed: dict[int, float] = {}
        self._keys: list[int] = []
        self._step = 0
        self.prior_slope = prior_slope

    def learn(self, dt: float, rows: int) -> None:
        self._step += 1
        old = self._t.get(rows)
        if old is None:
            guess = self.step_time(rows)
            if guess is not None:
                self._guessed[rows] = guess
            bisect.insort(self._keys, rows)
            self._t[rows], self._samples[rows] = dt, 1
        else:
            n = self._samples[rows] = self._samples[rows] + 1
            # The first step of a size is dropped: it pays one-time costs (llama.cpp grows its output
            # buffer for a step with more rows than any before). Then a mean, then a moving average.
            self._t[rows] = dt if n == 2 else old + max(LEARN_RATE, 1.0 / (n - 1)) * (dt - old)
            self._guessed.pop(rows, None)
        self._seen[rows] = self._step
        if self._step % 256 == 0:
            for n in [n for n in self._keys if self._step - self._seen[n] > FORGET_AFTER_STEPS]:
                self._keys.remove(n)
                del self._t[n], self._seen[n], self._samples[n]
                self._guessed.pop(n, None)

    def step_time(self, rows: int) -> float | None:
        """Expected seconds of a decode-only step with ``rows`` rows; None before any step of a size
        at or below it was measured, or past the largest measured size but not twice it."""
        t = self._t.get(rows)
        if t is not None:
            return min(t, self._guessed.get(rows, t))
        i = bisect.bisect_left(self._keys, rows)
        if i == 0:
            return None
        lo = self._keys[i - 1]
        t_lo = self._t[lo]
        if i < len(self._keys):  # between two measured sizes: the line through them
            hi = self._keys[i]
            return t_lo + (self._t[hi] - t_lo) * (rows - lo) / (hi - lo)
        if rows != 2 * lo:
            return None
        # The cost per row since the size that doubled to the largest one, or the prior where that is
        # lower: a row of a larger step often costs far less than the last doubling's (on zen4 two rows
        # cost twice one, four only a fifth more than two), and a size priced too high is never tried.
        # One that is priced too low is tried once or twice and then known.
        prior = self.prior_slope() or 0.5 * t_lo / lo
        j = bisect.bisect_right(self._keys, lo // 2)  # sizes at most half the largest one
        if j:
            half = self._keys[j - 1]
            prior = min(prior, max(0.0, (t_lo - self._t[half]) / (lo - half)))
        return t_lo + prior * (rows - lo)


class DraftBudget:
    """One step's drafting decisions: how many tokens of each sequence's guess to draft so that the
    whole step is expected to yield the most tokens per second (a longer step delays every sequence in
    it, so a draft must pay for everyone's wait, not only its own)."""

    __slots__ = ("_costs", "rows", "tokens")

    def __init__(self, costs: RowCosts, n_sequences: int) -> None:
        self._costs = costs
        self.rows = n_sequences  # each generating sequence decodes one token
        self.tokens = float(n_sequences)  # and is sure to get it

    def split(self, offers: Sequence[Sequence[float]], room: int | None = None) -> list[int]:
        """How many tokens to draft of each guess, given ``offers[i][k]``: the tokens expected to be
        accepted from a k-token draft of guess i (``offers[i][0]`` is 0); ``room`` rows at most.

        Rows go to the guessed tokens most likely to come true first, whichever sequence they belong
        to (a token's chance never exceeds the one before it in its guess), and the step grows while
        its expected tokens per second grow: a sequence whose guesses hold gets the rows a doubtful
        one would have taken, whatever their order in the batch."""
        ks = [0] * len(offers)
        base = self._costs.step_time(self.rows)
        if base is None or base <= 0 or not offers:
            return ks
        ranked: list[tuple[float, int, int]] = []  # (-chance, sequence, position)
        for i, gains in enumerate(offers):
            chance = float("inf")
            for j in range(1, len(gains)):
                chance = min(chance, gains[j] - gains[j - 1])
                ranked.append((-chance, i, j))
        ranked.sort()
        if room is not None:
            del ranked[max(0, room) :]
        best_r, best_rate, best_gain, gained = 0, self.tokens / base * MIN_GAIN, 0.0, 0.0
        for r, (neg_chance, _, _) in enumerate(ranked, 1):
            gained -= neg_chance
            t = self._costs.step_time(self.rows + r)
            if t is None or t <= 0:
                continue
            rate = (self.tokens + gained) / t
            if rate > best_rate:
                best_r, best_rate, best_gain = r, rate, gained
        for _, i, _ in ranked[:best_r]:
            ks[i] += 1
        self.rows += best_r
        self.tokens += best_gain
        return ks

    def pick(self, gains: Sequence[float]) -> int:
        """How many tokens to draft of one guess (``split`` with one offer)."""
        return self.split([gains])[0]
