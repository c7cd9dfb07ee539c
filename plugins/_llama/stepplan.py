"""The plan of one step of the batching loop: which waiting requests take which slots, and which tokens
each sequence evaluates (its decode token and draft, a prompt chunk, idle-time warm tokens)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from corral.errors import CorralError

from .mediasteps import media_floor, media_piece, span_at
from .slots import MIN_CHUNK, Job, Slot, StepClock, common_prefix

__all__ = ["BULK_EVERY", "BULK_PROMPT", "MIN_SHARE", "Piece", "StepPlanner"]

# A shared prefix shorter than this is cheaper to evaluate again than to wait for.
MIN_SHARE = 16
# While a short request (GenerationRequest.short) is served, every other sequence decodes in one step out
# of BULK_EVERY, and other prompts advance by BULK_PROMPT tokens in one step out of BULK_EVERY: on a CPU
# an extra row costs nearly as much as a whole step (2 cores, Gemma 3 270M: ~0.9 of a one-row step,
# draftcost.RowCosts) and a prompt token about a third of one, so the short answer's steps stay light; a
# short answer is at most SHORT_REPLY_TOKENS steps, and even then every sequence still decodes and every
# prompt advances once in BULK_EVERY steps, so nothing starves.
BULK_EVERY = 8
BULK_PROMPT = 8
# One entry of a step's plan: (slot, first prompt index or -1/-2, count).
Piece = tuple[Slot, int, int]


class StepPlanner:
    """Mixed into ``Batcher``: admission, the step plan, prefix sharing between sequences and the
    context shift, in terms of the loop's state (slots, waiting jobs, the step clock) and its steps
    (``_finish``/``_fail`` end a request, ``_truncate``/``_copy`` move KV cells)."""

    n_batch: int
    n_ctx_seq: int
    _n_par: int
    can_shift: bool
    _bos: int | None
    _lib: Any
    _mem: Any
    _slots: list[Slot]
    _waiting: deque[Job]
    _cond: threading.Condition
    _clock: StepClock
    _prompt_cap: int
    _draft_ok: bool
    _media: Any
    _finish: Any
    _fail: Any
    _truncate: Any
    _copy: Any
    _drafts: Any
    _draft_model: Any
    _owing: list[Slot]
    _prompt_rest: int
    _unshifted: bool
    _short_waiting: bool

    def _admit(self) -> None:
        """Move waiting jobs into free slots, in arrival order, each to its best-matching slot; at most
        ``num_parallel`` of them are not short (the one sequence more is for short requests)."""
        while True:
            with self._cond:
                free = [s for s in self._slots if s.job is None]
                room = sum(s.job is not None and not s.job.request.short for s in self._slots) < self._n_par
                job = next((j for j in self._waiting
                            if j.cancel.cancelled or (free and (room or j.request.short))), None)
                if job is None:
                    self._short_waiting = any(j.request.short for j in self._waiting)
                    return
                self._waiting.remove(job)
            if job.cancel.cancelled:
                job.t_admit = job.t_first = job.t_last = time.perf_counter_ns()
                self._emit_final(job, "stop")
                continue
            best = max(free, key=lambda s: (common_prefix(s.reusable, job.prompt), -s.last_used))
            # At least the last prompt token is evaluated again: its logits are needed to sample.
            keep = common_prefix(best.reusable, job.prompt, len(job.prompt) - 1)
            if job.spans:
                keep = media_floor(job.spans, keep)
                self._media.admitted(job.spans, keep)  # type: ignore[union-attr]
            self._truncate(best, keep)
            job.cached_tokens = keep
            job.t_admit = time.perf_counter_ns()
            best.job, best.state, best.warm, best.debt, best.rest = job, "prefill", [], 0.0, 0
            best.touch()
            if job.limit == 0:
                job.t_first = job.t_last = job.t_admit
                self._finish(best, "length")

    def _plan(self, active: list[Slot], warming: list[Slot]) -> tuple[list[Piece], list[Piece]]:
        """Decide this step's batch: (slot, first prompt index, or -1 for a decode token, or -2 for
        idle-time warm tokens, count), and its media pieces (slot, first prompt index, count). Warm
        tokens only fill what requests leave of the budget."""
        plan: list[Piece] = []
        media: list[Piece] = []
        gen = [s for s in active
               if s.state == "gen" and (len(s.cached) < self.n_ctx_seq or self._make_room(s))]
        # A sequence whose constraint cost the others more than its share sits this step out while a
        # sequence that owes nothing has work; when every active one owes, the debts are forgiven.
        self._owing = [s for s in gen if s.debt > 0]
        if self._owing and len(self._owing) == len(active):
            for s in self._owing:
                s.debt = 0.0
            self._owing = []
        if self._owing:
            gen = [s for s in gen if s.debt <= 0]
        short = any(self._serving_short(s) for s in active)
        if short:
            gen = self._bulk_turns(gen)
        else:  # the next short request's turns count from its arrival
            self._prompt_rest = 0
            for s in gen:
                s.rest = 0
        if self._draft_ok:
            # each sequence's guessed continuation, verified with its decode token; while short work is
            # served only short sequences draft (the others' rows would lengthen its steps)
            self._drafts(gen, lambda s: not short or s.job.request.short)  # type: ignore[union-attr]
        self._draft_ok = True
        for s in gen:
            plan.append((s, -1, 1 + len(s.draft)))
        n_gen = sum(n for _, _, n in plan)
        room = min(self.n_batch - n_gen, self._prompt_cap)
        budget = min(room, self._clock.mixed_budget()) if n_gen else room
        # short requests' prompts first; the others' chunks stay small while short work is served
        prefilling = sorted((s for s in active if s.state == "prefill"),
                            key=lambda s: (not s.job.request.short, s.job.order))  # type: ignore[union-attr]
        bulk_prompts = not short or self._prompt_turn()
        for s in prefilling:
            if budget <= 0:
                break
            job = s.job
            assert job is not None
            if not (bulk_prompts or job.request.short) or self._wait_for_shared(s, prefilling):
                continue
            start = len(s.cached)
            if short and not job.request.short:
                budget = min(budget, BULK_PROMPT)
            n = min(len(job.prompt) - start, budget)
            if job.spans:
                try:
                    n = media_piece(job.spans, start, n)
                except CorralError as exc:  # the encoder failed on this request's media
                    self._fail(s, exc, start)
                    continue
                if n == 0:
                    continue  # its next image is still on the encoder thread: the others go on meanwhile
            (media if job.spans and span_at(job.spans, start) else plan).append((s, start, n))
            budget -= n
        for s in [] if short else warming:  # idle-time work waits while short work is served
            n = min(len(s.warm), budget)
            if n > 0:
                plan.append((s, -2, n))
                budget -= n
        return plan, media

    def _served_at_once(self, prompt: list[int]) -> bool:
        """Whether a short request with ``prompt`` would be served as short work from its first step: a
        sequence is free, and one holds all but at most MIN_CHUNK of the prompt (``_serving_short``).
        Read without the loop's lock, so a guess: at worst a step is preempted for nothing."""
        free = any(s.job is None for s in self._slots)
        return free and len(prompt) - max(common_prefix(s.reusable, prompt) for s in self._slots) <= MIN_CHUNK

    @staticmethod
    def _serving_short(s: Slot) -> bool:
        """Whether ``s`` is a short request whose steps are kept light: generating its answer, or with
        at most MIN_CHUNK prompt tokens left to evaluate. A long prompt with a short answer is not
        favoured over the streams already decoding (they must not stall while it is evaluated)."""
        job = s.job
        if job is None or not job.request.short:
            return False
        return s.state == "gen" or len(job.prompt) - len(s.cached) <= MIN_CHUNK

    def _bulk_turns(self, gen: list[Slot]) -> list[Slot]:
        """``gen`` less the other sequences sitting this step out while short work is served: each
        decodes once every ``BULK_EVERY`` steps (``Slot.rest``: steps sat out in a row), or one step
        later when that step would be the last of every short answer (it ends alone, then they go)."""
        shorts = [s.job for s in gen if s.job.request.short]  # type: ignore[union-attr]
        last = bool(shorts) and all(j.limit - j.n_gen <= 1 for j in shorts)  # type: ignore[union-attr]
        kept = []
        for s in gen:
            due = BULK_EVERY - 1 if not last else BULK_EVERY
            if s.job.request.short or s.rest >= due:  # type: ignore[union-attr]
                s.rest = 0
                kept.append(s)
            else:
                s.rest += 1
        return kept

    def _prompt_turn(self) -> bool:
        """Whether, while short work is served, the other requests' prompts advance this step: once
        every ``BULK_EVERY`` steps (``_prompt_rest``: steps they sat out in a row)."""
        if self._prompt_rest >= BULK_EVERY - 1:
            self._prompt_rest = 0
            return True
        self._prompt_rest += 1
        return False

    def _wait_for_shared(self, s: Slot, prefilling: list[Slot]) -> bool:
        """Reuse another sequence's KV for this prompt's head; True while that KV is still coming."""
        job = s.job
        assert job is not None
        have = len(s.cached)
        cap = len(job.prompt) - 1
        donor, got = None, have
        for o in self._slots:
            if o is s:
                continue
            k = common_prefix(o.reusable, job.prompt, cap)
            if k > got:
                donor, got = o, k
        if job.spans:
            got = max(have, media_floor(job.spans, got))
        if donor is not None and got >= have + MIN_SHARE:
            self._copy(donor, s, got)
            job.cached_tokens += got - have
            have = got
        # An earlier request is still evaluating a longer common head: wait for it, not redo it.
        for o in prefilling:
            if o is s or o.job is None or o.job.order > job.order:
                continue
            if common_prefix(o.job.prompt, job.prompt, cap) >= have + MIN_SHARE:
                return True
        return False

    # ---- KV bookkeeping --------------------------------------------------------------------------
    def _preempted(self, plan: list[Piece]) -> None:
        """The step stopped part-way for a short request: llama.cpp dropped its batch's cells (one
        micro-batch: n_ubatch = n_batch), so each sequence stands where it stood, bar its draft."""
        for s, _, _ in plan:
            s.draft, s.draft_by_model = [], False
            # llama.cpp removed the batch's cells already; were it split into micro-batches, the
            # finished ones would stay, so every sequence is cut back to what it had
            self._lib.llama_memory_seq_rm(self._mem, s.id, len(s.cached), -1)

    def _make_room(self, s: Slot) -> bool:
        """The sequence filled its context: shift it (Ollama's keep + discard half), or finish."""
        job = s.job
        assert job is not None
        if not (job.request.shift and self.can_shift) or job.spans:  # media never shift (as in llama-server)
            self._finish(s, "length")
            return False
        keep = max(0, job.request.num_keep)
        if self._bos is not None and s.cached and s.cached[0] == self._bos:
            keep += 1
        # Cells shared with another sequence must not move: an idle one gives them up, a busy one
        # keeps them in place by widening what this shift keeps.
        for oid, k in list(s.shares.items()):
            o = self._slots[oid]
            if k > keep and o.job is None:
                self._truncate(o, keep)
        keep = max([keep, *(k for oid, k in s.shares.items() if self._slots[oid].job is not None)])
        n = len(s.cached)
        discard = (n - keep) // 2
        if keep >= n - 1 or discard <= 0:
            self._finish(s, "length")
            return False
        lib = self._lib
        lib.llama_memory_seq_rm(self._mem, s.id, keep, keep + discard)
        lib.llama_memory_seq_add(self._mem, s.id, keep + discard, n, -discard)
        self._unshifted = True
        if self._draft_model is not None:
            self._draft_model.shift(s.id, keep, discard)
        s.cached = s.cached[:keep] + s.cached[keep + discard :]
        s.reuse_limit = min(s.reuse_limit, keep)  # the shifted tail no longer matches a fresh evaluation
        job.truncated = True
        return True

