"""The continuous-batching decode loop: one thread and one llama_context per loaded model."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from corral.errors import (
    BackendError,
    CapabilityError,
    ContextLengthError,
    CorralError,
    GenerationCancelledError,
    InvalidRequestError,
)
from corral.lazycall import CallWatch
from corral.types import CancelToken, GenerationRequest, LoadOptions, TokenEvent

from .context import new_context, sequences
from .draftcost import RowCosts
from .draftmodel import DEFAULT_DRAFT_TOKENS, DraftModel
from .guesses import GuessStats
from .guidance import Guidance
from .guideddraft import GuidedDrafter
from .mediasteps import MediaSteps, span_at
from .memory import draft_rows
from .ngram import MAX_DRAFT, NgramDrafter
from .outputs import Outputs
from .recall import AnswerMemory
from .sampling import LazyCall, SamplerChain
from .slots import (
    CONTEXT_LENGTH_MESSAGE,
    Cells,
    Job,
    Slot,
    StepClock,
    Stream,
    fit_prompt,
)
from .speculate import Speculation
from .stepplan import Piece, StepPlanner
from .turns import ComputeTurns

__all__ = ["Batcher"]


class Batcher(StepPlanner, Speculation, Outputs):
    """Serves many concurrent ``submit`` calls by decoding their sequences together in one batch."""

    def __init__(self, native: Any, model: Any, options: LoadOptions, projector: Any = None,
                 draft: Any = None) -> None:
        self._native = native
        self._ffi, self._lib = ffi, lib = native.ffi, native.lib
        self._model = model
        self._vocab = model.vocab
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        n_par = max(1, int(options.num_parallel))
        # Speculation (draft_num_predict tokens per step; 0 turns it off): prompt lookup always, and the
        # draft model (``draft``, a LlamaModel with this model's vocabulary) when the model has one.
        n_draft = int(options.draft_num_predict)
        self._speculative = bool(options.speculative) and n_draft != 0
        self._lookup_max = n_draft if n_draft > 0 else MAX_DRAFT
        # Recent answers, for prompt lookup across requests (a retried or repeated request's answer).
        self._memory = AnswerMemory() if self._speculative else None
        # How far guesses come true, learned from every sequence's (what one answer teaches about
        # the model's copying holds for the next one's first tokens too).
        self._guess_stats = GuessStats(self._lookup_max)
        self._draft_model: DraftModel | None = None
        # llguidance's tokenizer is built while the contexts are created (C, without the GIL), and
        # before the loop runs: the build holds the GIL, so later it would stall every stream.
        self._guidance = Guidance(native, model)
        prepare = threading.Thread(target=self._guidance.prepare, name="corral-guidance", daemon=True)
        prepare.start()
        try:
            if draft is not None and self._speculative:
                self._draft_model = DraftModel(native, draft, self.n_vocab, options,
                                               n_draft if n_draft > 0 else DEFAULT_DRAFT_TOKENS)
            # Rows for drafted tokens per step, shared by the step's sequences.
            self._draft_pool = draft_rows(options, self._draft_model is not None)
            self._ctx = ctx = new_context(native, model, options, self._draft_pool)
        except BaseException:
            if self._draft_model is not None:
                self._draft_model.close()
            raise
        finally:
            prepare.join()  # it reads the model, which a failed load frees
        self._mem = lib.llama_get_memory(ctx)
        self.n_batch = int(lib.llama_n_batch(ctx))
        self.n_ctx_seq = max(32, int(options.num_ctx))  # our own per-sequence limit (the cache is shared)
        self.can_shift = bool(lib.llama_memory_can_shift(self._mem))
        add_bos = lib.llama_vocab_get_add_bos(self._vocab)
        self._bos = int(lib.llama_vocab_bos(self._vocab)) if add_bos else None
        raw = lib.llama_batch_init(self.n_batch, 0, 1)
        self._batch = ffi.new("llama_batch *", raw)
        self._tok = ffi.new("llama_token[]", self.n_batch)
        self._pos = ffi.new("llama_pos[]", self.n_batch)
        self._seq = ffi.new("llama_seq_id[]", self.n_batch)
        self._logit = ffi.new("int8_t[]", self.n_batch)
        # num_parallel sequences for any request, and one more only short requests take (see _admit)
        self._slots = [Slot(i) for i in range(sequences(options))]
        self._n_par = n_par
        cells = Cells(lib, self._mem, self._slots)
        self._truncate, self._copy = cells.truncate, cells.copy
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        self._eog: dict[int, bool] = {}
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._order = 0
        self._closed = False
        self._freed = False
        self._clock = StepClock(self.n_batch)
        self._row_costs = RowCosts(lambda: self._clock.t_prompt_tok)
        # the model's embedding decodes take turns with this loop's steps (see ComputeTurns)
        # A bulk step a short request arrives during stops at its next graph node (ComputeTurns.preempt);
        # llama.cpp reads the flag without the GIL (corral_abort_flag).
        self.turns = ComputeTurns(self._clock.mixed_budget, ffi.new("int *"))
        lib.llama_set_abort_callback(ctx, lib.corral_abort_flag_ptr(), self.turns.stop)
        self._stopped = False  # the last step was preempted: the next one runs whatever arrives
        self.preempted_steps = 0  # steps stopped for a short request (each is done again later)
        self._unshifted = False  # a context shift waits for the next llama_decode (never to be cut short)
        self._short_waiting = False  # a short request waits for a sequence (set by _admit)
        self._prompt_cap = self.n_batch  # lowered after llama_decode finds no KV room
        self._draft_ok = True  # False for one step after llama_decode found no room for drafts
        self._owing: list[Slot] = []  # sequences sitting this step out to pay back a grammar's cost
        self._prompt_rest = 0  # steps other prompts sat out in a row while short work was served
        # Prompts with images or audio: the projector's encoder thread and an embedding batch.
        self._media = None if projector is None else MediaSteps(native, projector, self.n_batch, self._wake)
        self._thread = threading.Thread(target=self._run, name="corral-batcher", daemon=True)
        self._thread.start()

    # ---- public ----------------------------------------------------------------------------------
    @property
    def contexts(self) -> list[Any]:
        """The ``llama_context*`` this loop decodes in, and its draft model's (for their memory)."""
        return [self._ctx] + ([self._draft_model.context] if self._draft_model is not None else [])

    def submit(self, request: GenerationRequest, cancel: CancelToken) -> Iterator[TokenEvent]:
        """Queue ``request``; the returned iterator yields its events as the loop produces them.

        Bad input (empty prompt, unknown token ids, invalid grammar, a prompt too long for the
        context without ``shift``) raises here, before anything is queued.
        """
        if self._closed:
            raise GenerationCancelledError("the model is being unloaded; retry the request")
        prompt = list(request.prompt)
        if not prompt and not request.media:
            raise InvalidRequestError("the prompt is empty")
        lo, hi = min(prompt, default=0), max(prompt, default=0)
        if lo < 0 or hi >= self.n_vocab:
            raise InvalidRequestError(f"prompt token {lo if lo < 0 else hi} is not in the vocabulary")
        spans = []
        if request.media:
            if self._media is None:
                raise CapabilityError("this model has no projector loaded, so it cannot read images or audio")
            prompt, spans = self._media.expand(request)  # media keys stand for their embedding rows
        sampler = None
        try:
            if spans and len(prompt) >= self.n_ctx_seq:  # an image is never cut in half to fit
                raise ContextLengthError(f"{CONTEXT_LENGTH_MESSAGE} (the prompt has {len(prompt)} tokens "
                                         f"with its media, and the context holds {self.n_ctx_seq})")
            prompt, truncated = fit_prompt(prompt, self.n_ctx_seq, request.num_keep, request.shift, self._bos)
            # A schema compiles with llguidance here, in the request's own thread (never the event
            # loop, never the batching loop); where it cannot, its GBNF form runs on llama.cpp's sampler.
            json_schema = request.sampling.json_schema
            guide = self._guidance.guide(json_schema) if json_schema is not None else None
            lazy = None
            if json_schema is not None and json_schema.lazy:
                lazy = LazyCall(watch=CallWatch(json_schema), piece=self._piece,
                                tokenize=lambda text: self._model.tokenize(text, add_special=False),
                                guide=guide, eog=self._end_token())
                guide = None
            sampler = SamplerChain(self._native, self._vocab, self.n_vocab, self.n_ctx_seq, request.sampling,
                                   guide=guide, lazy=lazy)
            sampler.accept_history([t for t in prompt[-self.n_ctx_seq :] if t >= 0])
            limit = request.num_predict if request.num_predict >= 0 else 10 * self.n_ctx_seq
            drafter: NgramDrafter | GuidedDrafter | None = None
            if self._speculative:
                # A seed pins a request's output, so its drafts come from its own text alone: what
                # other requests taught (their answers, how far guesses held) would change its drafts,
                # and with them the batch shapes that move a sampled token's near-ties between runs.
                alone = request.sampling.seed >= 0
                drafter = NgramDrafter(prompt, self._lookup_max, None if alone else self._memory,
                                       None if alone else self._guess_stats)
                if guide is not None or (lazy is not None and lazy.guide is not None):
                    # under an llguidance constraint the grammar trims and adds drafts
                    drafter = GuidedDrafter(drafter, sampler, prompt, self._tokenize_bytes)
            with self._cond:
                if self._closed:
                    raise GenerationCancelledError("the model is being unloaded; retry the request")
                self._order += 1
                job = Job(request, cancel, sampler, prompt, truncated, self._order, limit, spans, drafter)
                self._waiting.append(job)
                self._cond.notify()
            if (request.short and self._served_at_once(prompt)) or not self.turns.busy:
                # its first step need not wait for a bulk step or an embedding decode (an idle loop's
                # may be long: embed.IDLE_LOOP_HOLD_S)
                self.turns.preempt()
        except BaseException:
            if sampler is not None:
                sampler.close()
            if self._media is not None:
                self._media.release(spans)
            raise
        return self._stream(job)

    def close(self) -> None:
        """Stop the loop, fail what is still queued or running, free the context. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        if self._media is not None:
            self._media.close()
        self._free()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---- consumer side ---------------------------------------------------------------------------
    def _stream(self, job: Job) -> Iterator[TokenEvent]:
        return Stream(job)

    # ---- loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._busy():
                    self._cond.wait()
                if self._closed:
                    break
            try:
                self._step()
            except Exception as exc:  # a bug or native failure must not kill the loop silently
                err = exc if isinstance(exc, CorralError) else BackendError(f"generation failed: {exc}")
                for s in self._active():
                    self._fail(s, err, len(s.cached))
        self._shutdown_jobs()

    def _active(self) -> list[Slot]:
        return [s for s in self._slots if s.job is not None]

    def _busy(self) -> bool:
        return any(s.job is not None or s.warm for s in self._slots)

    def _step(self) -> None:
        with self._cond:
            gone = [j for j in self._waiting if j.cancel.cancelled]
            for j in gone:
                self._waiting.remove(j)
        for j in gone:
            self._emit_final(j, "stop")
        self._admit()
        for s in self._active():
            assert s.job is not None
            if s.job.cancel.cancelled:
                self._finish(s, "stop")
        active, warming = self._active(), [s for s in self._slots if s.job is None and s.warm]
        self._mark_short()
        if not self._short_waiting:  # embedding decodes now wait for the admitted ones (_mark_short)
            self.turns.settled()
        if not active and not warming:
            return
        t0 = time.perf_counter()
        plan, media = self._plan(active, warming)
        if not plan and not media:
            # Nothing runnable this step (a retry after llama_decode found no room, images still on the
            # encoder thread): do not spin; the encoder wakes the loop when it is done.
            with self._cond:
                self._cond.wait(0.005)
            return
        # A step that serves no short request may be preempted by one, unless the last step was (so bulk
        # work always moves) or a context shift is pending (llama.cpp applies it before the batch, and a
        # shift cut short would leave some layers shifted).
        short = any(s.job is not None and s.job.request.short for s in active)
        may_stop = not (short or self._stopped or self._unshifted)
        # A batch holds token ids or embedding rows, never both: media pieces get their own decodes.
        with self.turns.step(may_stop):
            # already stopped: a short request arrived after the plan was made without it
            stopped = self.turns.stopped
            if stopped:
                self._preempted(plan)
            elif plan:
                stopped = self._decode(plan)
            for s, start, n in media:
                if not stopped:
                    stopped = self._decode_media(s, start, n)
        if not may_stop:
            self._unshifted = False
        self._stopped = stopped
        self.preempted_steps += stopped
        self._mark_short()  # a short request that just ended no longer holds embedding decodes back
        if self._owing:  # the sequences that sat this step out have paid back what it took
            dt = time.perf_counter() - t0
            for s in self._owing:
                s.debt = max(0.0, s.debt - dt)

    def _mark_short(self) -> None:
        self.turns.busy = any(s.job is not None for s in self._slots)
        self.turns.serving_short(any(s.job is not None and s.job.request.short for s in self._slots))

    # ---- decoding --------------------------------------------------------------------------------
    def _decode_media(self, s: Slot, start: int, n: int) -> bool:
        """Evaluate ``n`` media rows of ``s``; True when a short request preempted it."""
        job = s.job
        if job is None or len(s.cached) != start:  # finished or failed by an earlier decode this step
            return False
        span = span_at(job.spans, start)
        assert span is not None and self._media is not None
        last = start + n == len(job.prompt)
        t0 = time.perf_counter()
        rc = self._media.decode(self._ctx, span, start, n, s.id, last)
        if rc == 2:  # preempted: llama.cpp dropped the rows' cells, the next steps evaluate them again
            return True
        if rc != 0:
            if rc == 1 and any(o.job is None and o.cached for o in self._slots):
                self._decode_failed([(s, start, n)], rc)  # idle sequences give up their cells; retry
            else:
                self._fail(s, BackendError(f"llama_decode failed (code {rc}) on the {span.kind}"), start)
            return False
        self._clock.learn(time.perf_counter() - t0, n, 0)
        exact = s.reuse_limit == len(s.cached)
        s.cached.extend(job.prompt[start : start + n])
        if exact:
            s.reuse_limit = len(s.cached)
        if last:
            self._sampled(s, n - 1, time.perf_counter_ns())
        return False

    def _decode(self, plan: list[Piece]) -> bool:
        """Evaluate the step's batch and sample its outputs; True when a short request preempted it."""
        tok, pos, seq, lg = self._tok, self._pos, self._seq, self._logit
        i = 0
        outputs: list[tuple[Slot, int, int]] = []  # (slot, first row, rows)
        n_prompt = 0
        for s, start, n in plan:
            job = s.job
            p0 = len(s.cached)
            if start == -1:
                toks = [s.last_token, *s.draft]
            elif start == -2:
                toks = s.warm[:n]
                n_prompt += n
            else:
                assert job is not None
                toks = job.prompt[start : start + n]
                n_prompt += n
            tok[i : i + n] = toks
            pos[i : i + n] = range(p0, p0 + n)
            seq[i : i + n] = [s.id] * n
            lg[i : i + n] = [0] * n
            if start == -1:
                lg[i : i + n] = [1] * n  # a row for the next token after each drafted one
                outputs.append((s, i, n))
            elif job is not None and start >= 0 and start + n == len(job.prompt):
                lg[i + n - 1] = 1
                outputs.append((s, i + n - 1, 1))
            i += n
        if self._lib.corral_batch_fill(self._batch, self.n_batch, tok, pos, seq, lg, i) != i:
            raise BackendError("internal error: batch larger than n_batch")
        t0 = time.perf_counter()
        rc = self._lib.llama_decode(self._ctx, self._batch[0])
        if rc == 2:
            self._preempted(plan)
            return True
        if rc != 0:
            self._decode_failed(plan, rc)
            return False
        self._prompt_cap = self.n_batch
        for s, start, n in plan:
            job = s.job
            exact = s.reuse_limit == len(s.cached)  # nothing shifted: the new tokens extend an exact prefix
            if start == -1:
                s.cached.append(s.last_token)
                s.cached.extend(s.draft)
            elif start == -2:
                s.cached.extend(s.warm[:n])
                del s.warm[:n]
            else:
                assert job is not None
                s.cached.extend(job.prompt[start : start + n])
            if exact:
                s.reuse_limit = len(s.cached)
        if n_prompt and self._draft_model is not None:
            self._mirror([s for s, start, _ in plan if start >= 0])
        # The step's cost as the clock sees it includes the draft model's share of the prompt chunks.
        dt = time.perf_counter() - t0
        self._clock.learn(dt, n_prompt, sum(1 for _, st, _ in plan if st == -1))
        if not n_prompt:
            self._row_costs.learn(dt, i)
        now = time.perf_counter_ns()
        for s, row, n in outputs:
            if n == 1:
                self._sampled(s, row, now)
            else:
                self._verify(s, row, n, now)
        return False

    def _decode_failed(self, plan: list[tuple[Slot, int, int]], rc: int) -> None:
        if rc == 1:
            # No free KV cells: idle cached sequences give theirs up first, then prompt chunks shrink;
            # llama.cpp restored the cache, so the next step simply retries with the smaller plan.
            idle = [s for s in self._slots if s.job is None and s.cached]
            if idle:
                for s in idle:
                    self._truncate(s, 0)
                return
            if any(start == -1 and n > 1 for _, start, n in plan):
                for s, _, _ in plan:
                    s.draft = []
                self._draft_ok = False  # retry without drafts first
                return
            n_prompt = sum(n for _, start, n in plan if start >= 0)
            if n_prompt > 1:
                self._prompt_cap = n_prompt // 2
                return
        err = BackendError(f"llama_decode failed (code {rc}) while generating")
        for s, _, _ in plan:
            # Whatever part of the batch llama.cpp kept is dropped so the slot stays consistent.
            self._fail(s, err, len(s.cached))

    def _free(self) -> None:
        with self._cond:
            if self._freed:
                return
            self._freed = True
        self._lib.llama_batch_free(self._batch[0])
        self._lib.llama_free(self._ctx)
        self._ctx = self._ffi.NULL
        if self._draft_model is not None:
            self._draft_model.close()
