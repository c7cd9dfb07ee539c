"""Speculative decoding steps of the batching loop: a sequence's draft joins its decode token, and
the rows that come back are verified in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .draftcost import DraftBudget, RowCosts
from .draftmodel import DraftModel
from .slots import Slot

__all__ = ["Speculation"]


class Speculation:
    """Mixed into ``Batcher``: drafting and verification, in terms of the loop's own steps
    (``_draw`` samples a row, ``_emit`` hands a token to its request, ``_truncate`` drops KV).

    A sequence drafts by prompt lookup first (free: an n-gram of its context repeats), else with the
    model's draft model when it has one (``_draft_model``), as llama-server chains its drafters."""

    n_batch: int
    n_ctx_seq: int
    _draft_pool: int
    _draft_model: DraftModel | None
    _row_costs: RowCosts
    _draw: Any
    _emit: Any
    _truncate: Any

    def _drafts(self, gen: list[Slot], may_draft: Callable[[Slot], bool] = lambda s: True) -> None:
        """Set ``s.draft`` of every generating sequence: tokens guessed to follow ``s.last_token``,
        verified in this step's batch with it (none where ``may_draft`` says no). The batch keeps a row
        for every sequence's decode token; drafts share ``_draft_pool`` rows."""
        room = min(self.n_batch - len(gen), self._draft_pool)  # the context's rows of logits for drafts
        budget = DraftBudget(self._row_costs, len(gen))
        offers: list[tuple[Slot, list[int], list[float]]] = []
        limits: dict[int, int] = {}
        for s in gen:
            s.draft, s.draft_by_model = [], False
            limit = self._draft_limit(s, room) if may_draft(s) else 0
            if limit <= 0:
                continue
            job = s.job
            assert job is not None and job.drafter is not None
            limits[s.id] = limit
            guess, gains = job.drafter.offer(limit)
            if guess:
                offers.append((s, guess, gains))
        # Prompt lookup drafts as far as the step can afford (often nothing), the likeliest guessed
        # tokens first, whichever sequence they belong to.
        for (s, guess, _), k in zip(offers, budget.split([g for _, _, g in offers], room), strict=True):
            s.draft = guess[:k]
            room -= k
        # Where it drafts nothing, the draft model drafts (free of the cost model: Ollama's
        # draft_num_predict says how far).
        wants: list[tuple[int, list[int], int, int]] = []
        by_id: dict[int, Slot] = {}
        for s in gen:
            if s.id in limits and not s.draft and self._uses_draft_model(s) and room > 0:
                assert self._draft_model is not None
                n = min(limits[s.id], room, self._draft_model.n_tokens)
                wants.append((s.id, s.cached, s.last_token, n))
                by_id[s.id] = s
                room -= n
        if wants:
            assert self._draft_model is not None
            for seq, draft in self._draft_model.draft(wants).items():
                by_id[seq].draft, by_id[seq].draft_by_model = draft, True

    def _draft_limit(self, s: Slot, room: int) -> int:
        job = s.job
        assert job is not None
        if job.drafter is None:
            return 0
        # Never past num_predict or the context: speculation must not change where a request ends.
        return min(room, job.limit - job.n_gen - 1, self.n_ctx_seq - len(s.cached) - 2)

    def _uses_draft_model(self, s: Slot) -> bool:
        """Whether ``s`` drafts with the draft model: it has one, and the prompt has no images or audio
        (their rows are the target's projector's, which a draft model cannot read)."""
        job = s.job
        return self._draft_model is not None and job is not None and job.drafter is not None and not job.spans

    def _mirror(self, slots: list[Slot]) -> None:
        """After the target evaluated prompt chunks of ``slots``: the draft model evaluates them too, in
        the same step, so the first draft does not wait for a whole prompt."""
        if self._draft_model is not None:
            wants = [(s.id, s.cached) for s in slots if self._uses_draft_model(s)]
            if wants:
                self._draft_model.sync(wants)

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
        job.drafted += len(draft)
        job.accepted += accepted
        job.drafter.extend(emitted)
        keep = base + accepted
        if len(s.cached) > keep:  # the refused guesses leave the cache
            warm = s.warm
            self._truncate(s, keep)
            if s.job is None and warm and s.reuse_limit == keep:
                s.warm = warm  # an answer that just ended still gets its turn suffix cached
