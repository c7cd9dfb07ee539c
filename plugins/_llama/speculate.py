"""Speculative decoding steps of the batching loop: a sequence's draft joins its decode token, and
the rows that come back are verified in order."""

from __future__ import annotations

from typing import Any

from .slots import Slot

__all__ = ["Speculation"]


class Speculation:
    """Mixed into ``Batcher``: drafting and verification, in terms of the loop's own steps
    (``_draw`` samples a row, ``_emit`` hands a token to its request, ``_truncate`` drops KV)."""

    n_batch: int
    n_ctx_seq: int
    _draw: Any
    _emit: Any
    _truncate: Any

    def _drafts(self, gen: list[Slot]) -> None:
        """Set ``s.draft`` of every generating sequence: tokens guessed to follow ``s.last_token``,
        verified in this step's batch with it. The batch keeps a row for every sequence's decode token."""
        room = self.n_batch - len(gen)
        for s in gen:
            s.draft = self._draft(s, room)
            room -= len(s.draft)

    def _draft(self, s: Slot, room: int) -> list[int]:
        job = s.job
        assert job is not None
        if job.drafter is None:
            return []
        # Never past num_predict or the context: speculation must not change where a request ends.
        limit = min(room, job.limit - job.n_gen - 1, self.n_ctx_seq - len(s.cached) - 2)
        if limit <= 0:
            return []
        return job.drafter.propose(limit)

    def _verify(self, s: Slot, row0: int, n: int, now: int) -> None:
        """Sample the rows of a drafted step in order, as plain decoding would have sampled them one
        step at a time: each draft token stands while it equals what was sampled. The sampler, its
        grammar and its random draws see exactly the tokens they would see without speculation, so
        greedy output is the same and sampled output keeps the model's distribution (a fixed guess is
        accepted with exactly the probability the model gives it)."""
        job = s.job
        assert job is not None and job.drafter is not None
        draft, s.draft = s.draft, []
        base = len(s.cached) - len(draft)  # KV up to and including the token before the draft
        accepted = 0
        emitted: list[int] = []
        for j in range(n):
            t = self._draw(s, row0 + j, base + accepted)
            if t is None:
                break
            cont = self._emit(s, t, row0 + j, now)
            emitted.append(t)
            if cont and j < len(draft) and t == draft[j]:
                accepted += 1
                continue
            break
        job.drafter.verified(len(draft), accepted)
        job.drafter.extend(emitted)
        keep = base + accepted
        if len(s.cached) > keep:  # the refused guesses leave the cache
            warm = s.warm
            self._truncate(s, keep)
            if s.job is None and warm and s.reuse_limit == keep:
                s.warm = warm  # an answer that just ended still gets its turn suffix cached
