"""What a step's output rows become: sampled tokens handed to their requests (end of generation, stop
strings, logprobs, num_predict), and the ends of requests, as the batching loop's mixin."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from corral.errors import CorralError, GenerationCancelledError
from corral.types import TokenEvent

from .sampling import logprobs_from_logits
from .slots import GRAMMAR_FREE_S, GRAMMAR_YIELD, Job, Slot

__all__ = ["Outputs"]


class Outputs:
    """Mixed into ``Batcher``: drawing a row's token, handing it to its request, and ending requests,
    in terms of the loop's state (its context, model, slots and waiting jobs)."""

    n_vocab: int
    n_ctx_seq: int
    _ctx: Any
    _ffi: Any
    _lib: Any
    _native: Any
    _model: Any
    _vocab: Any
    _pieces: list[bytes | None]
    _eog: dict[int, bool]
    _slots: list[Slot]
    _waiting: deque[Job]
    _cond: threading.Condition
    _media: Any
    _truncate: Any

    def _sampled(self, s: Slot, row: int, now: int) -> None:
        t = self._draw(s, row, len(s.cached))
        if t is not None:
            cont = self._emit(s, t, row, now)
            if cont and s.job is not None and s.job.drafter is not None:
                s.job.drafter.extend([t])

    def _draw(self, s: Slot, row: int, keep: int) -> int | None:
        """The sampled token of output ``row``, or None when the request ended (cancelled, or its
        grammar allows nothing more: that ends this request only, keeping ``keep`` cached tokens)."""
        job = s.job
        assert job is not None
        if job.cancel.cancelled:
            self._finish(s, "stop")
            return None
        try:
            if not job.sampler.grammar:
                return int(job.sampler.sample(self._ctx, row))
            t0 = time.perf_counter()
            t = int(job.sampler.sample(self._ctx, row))
            s.debt += max(0.0, time.perf_counter() - t0 - GRAMMAR_FREE_S) * GRAMMAR_YIELD
            return t
        except CorralError as exc:
            self._fail(s, exc, keep)
            return None

    def _emit(self, s: Slot, t: int, row: int, now: int) -> bool:
        """Hand sampled token ``t`` to the request; False when that ended it."""
        job = s.job
        assert job is not None
        if job.t_first == 0:
            job.t_first = now
        job.t_last = now
        s.state = "gen"
        if self._is_eog(t):
            # The end-of-turn token was sampled, not evaluated: the cache ends with the answer.
            self._finish(s, "stop", warm=job.request.turn_suffix)
            return False
        job.n_gen += 1
        s.last_token = t
        lp = tops = None
        if job.request.logprobs or job.request.top_logprobs:
            ptr = self._lib.llama_get_logits_ith(self._ctx, row)
            logits = np.frombuffer(self._ffi.buffer(ptr, self.n_vocab * 4), dtype=np.float32)
            lp, tops = logprobs_from_logits(logits, t, job.request.top_logprobs, self._piece)
        text, stopped = job.stopper.feed(job.decoder.feed(self._piece(t)))
        if stopped:
            if text or lp is not None:
                job.out.put(TokenEvent(token=t, text=text, logprob=lp, top_logprobs=tops))
            self._finish(s, "stop")
            return False
        job.out.put(TokenEvent(token=t, text=text, logprob=lp, top_logprobs=tops))
        if job.n_gen >= job.limit:
            suffix = job.request.turn_suffix
            self._finish(s, "length", warm=[t, *suffix] if suffix else None)
            return False
        return True

    def _piece(self, t: int) -> bytes:
        p = self._pieces[t]
        if p is None:
            p = self._pieces[t] = bytes(self._model.token_bytes(t))
        return p

    def _tokenize_bytes(self, text: bytes) -> list[int]:
        return self._model.tokenize(text, add_special=False)

    def _end_token(self) -> int:
        """An end-of-generation token (a complete lazy call is where llama.cpp's grammar allows it)."""
        eos = int(self._native.lib.llama_vocab_eos(self._vocab))
        if eos >= 0:
            return eos
        return next((t for t in range(self.n_vocab) if self._is_eog(t)), 0)

    def _is_eog(self, t: int) -> bool:
        v = self._eog.get(t)
        if v is None:
            v = self._eog[t] = bool(self._model.is_eog(t))
        return v

    # ---- endings ---------------------------------------------------------------------------------
    def _finish(self, s: Slot, reason: str, warm: list[int] | None = None) -> None:
        job = s.job
        assert job is not None
        self._emit_final(job, reason)
        s.job, s.state = None, "idle"
        s.touch()
        # Only an exact cache that ends with the whole answer is worth extending for the next turn.
        if warm and s.reuse_limit == len(s.cached) and len(s.cached) + len(warm) < self.n_ctx_seq:
            s.warm = list(warm)

    def _emit_final(self, job: Job, reason: str) -> None:
        event = job.final_event(reason)
        self._done(job)
        job.out.put(event)

    def _fail(self, s: Slot, err: BaseException, keep: int) -> None:
        job = s.job
        s.job, s.state, s.warm = None, "idle", []
        self._truncate(s, keep)
        if job is not None:
            self._done(job)
            job.out.put(err)

    def _shutdown_jobs(self) -> None:
        err = GenerationCancelledError("generation stopped: the model was unloaded")
        for s in self._slots:
            if s.job is not None:
                job, s.job = s.job, None
                self._done(job)
                job.out.put(err)
        with self._cond:
            while self._waiting:
                job = self._waiting.popleft()
                self._done(job)
                job.out.put(err)

    def _done(self, job: Job) -> None:
        job.done = True
        job.sampler.close()
        if job.drafter is not None:
            job.drafter.finish()
        if job.spans and self._media is not None:
            self._media.release(job.spans)
