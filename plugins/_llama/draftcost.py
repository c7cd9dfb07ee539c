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
    another. Step sizes never seen are estimated from their neighbours; past the largest measured one,
    from the cost per row between the two largest, or before two sizes are measured from
    ``prior_slope`` (the learned cost of one prompt token). So one draft tried on the prior's word
    measures the machine, and no size is tried just because it was never seen."""

    __slots__ = ("_t", "_seen", "_keys", "_step", "prior_slope")

    def __init__(self, prior_slope: Callable[[], float]) -> None:
        self._t: dict[int, float] = {}
        self._seen: dict[int, int] = {}
        self._keys: list[int] = []
        self._step = 0
        self.prior_slope = prior_slope

    def learn(self, dt: float, rows: int) -> None:
        self._step += 1
        old = self._t.get(rows)
        if old is None:
            bisect.insort(self._keys, rows)
            self._t[rows] = dt
        else:
            self._t[rows] = old + LEARN_RATE * (dt - old)
        self._seen[rows] = self._step
        if self._step % 256 == 0:
            for n in [n for n in self._keys if self._step - self._seen[n] > FORGET_AFTER_STEPS]:
                self._keys.remove(n)
                del self._t[n], self._seen[n]

    def step_time(self, rows: int) -> float | None:
        """Expected seconds of a decode-only step with ``rows`` rows; None before any step of a size
        at or below it was measured."""
        t = self._t.get(rows)
        if t is not None:
            return t
        i = bisect.bisect_left(self._keys, rows)
        if i == 0:
            return None
        lo = self._keys[i - 1]
        t_lo = self._t[lo]
        if i < len(self._keys):  # between two measured sizes: the line through them
            hi = self._keys[i]
            return t_lo + (self._t[hi] - t_lo) * (rows - lo) / (hi - lo)
        if i >= 2:  # past the largest measured size: the cost per row between the two largest
            below = self._keys[i - 2]
            slope = max(0.0, (t_lo - self._t[below]) / (lo - below))
        else:  # one size measured: the prior, until a draft measures a larger one
            slope = self.prior_slope() or 0.5 * t_lo / lo
        return t_lo + slope * (rows - lo)


class DraftBudget:
    """One step's drafting decisions, sequence by sequence: each draft is as long as maximises the
    tokens the whole step is expected to yield per second (a longer step delays every sequence in it,
    so a draft must pay for everyone's wait, not only its own)."""

    __slots__ = ("_costs", "rows", "tokens")

    def __init__(self, costs: RowCosts, n_sequences: int) -> None:
        self._costs = costs
        self.rows = n_sequences  # each generating sequence decodes one token
        self.tokens = float(n_sequences)  # and is sure to get it

    def pick(self, gains: Sequence[float]) -> int:
        """How many tokens to draft, given ``gains[k]``: the tokens expected to be accepted from a
        k-token draft (``gains[0]`` is 0)."""
        base = self._costs.step_time(self.rows)
        if base is None or base <= 0:
            return 0
        best_k, best_rate = 0, self.tokens / base * MIN_GAIN
        for k in range(1, len(gains)):
            t = self._costs.step_time(self.rows + k)
            if t is None or t <= 0:
                break
            rate = (self.tokens + gains[k]) / t
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k:
            self.rows += best_k
            self.tokens += gains[best_k]
        return best_k
