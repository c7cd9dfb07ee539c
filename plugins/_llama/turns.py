"""A model's cores shared in turns between its batching loop's steps and its embedding decodes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["EMBED_WAIT_S", "ComputeTurns", "StopFlag"]

# Longest an embedding decode waits for short requests to be served before it takes its turn anyway.
EMBED_WAIT_S = 1.0


class StopFlag(Protocol):
    """The int a decode's llama.cpp abort callback reads (``int *`` from cffi): non-zero stops it."""

    def __getitem__(self, i: int) -> int: ...
    def __setitem__(self, i: int, v: int) -> None: ...


class ComputeTurns:
    """Whose decode runs on a model's cores now: a step of the batching loop or an embedding decode,
    never both. Two llama.cpp thread pools on the same few cores spin at each other's barriers and both
    slow many times over; in turns each runs at full speed. An embedding decode that is ready runs
    before the loop's next step, except while short requests (``GenerationRequest.short``: a few steps
    each) are being served: then it waits for them, at most ``EMBED_WAIT_S``. ``budget`` gives the
    tokens one embedding decode may pack so that it holds the loop about as long as a step that
    evaluates a prompt chunk (``StepClock.mixed_budget``).

    A short request queued while a bulk step or an embedding decode runs need not wait for it to end,
    nor need any request that finds the loop idle (``preempt``): a decode that took its turn with
    ``may_stop`` stops at its next graph node, and llama.cpp drops the cells of its batch, so it is
    only done again later (at most one decode's work is lost, once per such request: the holders take
    their next turn after a stop without ``may_stop``). ``stop`` is the flag the abort callback of
    every context here reads (one decode runs at a time, so one flag serves them all)."""

    def __init__(self, budget: Callable[[], int], stop: StopFlag | None = None) -> None:
        self.budget = budget
        self.stop: StopFlag = stop if stop is not None else [0]
        self._cond = threading.Condition()
        self._running = False  # a decode holds the turn
        self._ready = 0  # embedding decodes that wait only for the running one to end
        self._short = False  # the loop is serving short requests
        self.busy = False  # the loop has requests in its slots (set by the loop before each step)
        self._may_stop = False  # the running decode may be stopped
        self._urgent = False  # a request was preempted for: the loop's next step goes before anything

    def preempt(self) -> None:
        """A request that must not wait was queued: the decode running now stops early if it took its
        turn with ``may_stop``, and until the loop serves the request (``settled``, or a step without
        ``may_stop``), embedding decodes wait (one that takes its turn with ``may_stop`` stops at once)."""
        with self._cond:
            self._urgent = True
            if self._running and self._may_stop:
                self.stop[0] = 1

    def settled(self) -> None:
        """The loop admitted (or dropped) every short request queued: no embedding decode need wait for
        its next step any longer."""
        if self._urgent:
            with self._cond:
                self._urgent = False
                self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        """Whether the decode holding the turn is to stop (read by that holder)."""
        return self.stop[0] != 0

    def serving_short(self, short: bool) -> None:
        """Called by the loop before each step (and when it goes idle)."""
        if short == self._short:
            return
        with self._cond:
            self._short = short
            self._cond.notify_all()

    @contextmanager
    def step(self, may_stop: bool = False) -> Iterator[None]:
        """The loop's turn: after the running decode and the embedding decodes that are ready. With
        ``may_stop`` the step may be preempted, and is ``stopped`` already when a short request was
        queued since the loop planned it (it need not start: its plan lacks that request)."""
        with self._cond:
            while self._running or (self._ready and not self._urgent):
                self._cond.wait()
            self._take(may_stop)
            if not may_stop:
                self._urgent = False
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def embedding(self, may_stop: bool = False) -> Iterator[None]:
        """An embedding decode's turn: before the loop's next step, once short requests are served.
        One already waiting for the running step gives way again when a short request is admitted
        meanwhile (the loop marks it before that request's first step). With ``may_stop`` the decode
        may be preempted."""
        deadline = time.monotonic() + EMBED_WAIT_S
        with self._cond:
            while True:
                left = deadline - time.monotonic()
                if (self._short or self._urgent) and left > 0:
                    self._cond.wait(left)
                    continue
                if not self._running:
                    break
                self._ready += 1
                try:
                    self._cond.wait()
                finally:
                    self._ready -= 1
                    self._cond.notify_all()  # a step waiting for this decode looks again
            self._take(may_stop)
        try:
            yield
        finally:
            self._release()

    def _take(self, may_stop: bool) -> None:
        self._running = True
        self._may_stop = may_stop
        self.stop[0] = 1 if may_stop and self._urgent else 0

    def _release(self) -> None:
        with self._cond:
            self._running = False
            self._may_stop = False
            self._cond.notify_all()
