"""A model's cores shared in turns between its batching loop's steps and its embedding decodes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["EMBED_WAIT_S", "ComputeTurns"]

# Longest an embedding decode waits for short requests to be served before it takes its turn anyway.
EMBED_WAIT_S = 1.0


class ComputeTurns:
    """Whose decode runs on a model's cores now: a step of the batching loop or an embedding decode,
    never both. Two llama.cpp thread pools on the same few cores spin at each other's barriers and both
    slow many times over; in turns each runs at full speed. An embedding decode that is ready runs
    before the loop's next step, except while short requests (``GenerationRequest.short``: a few steps
    each) are being served: then it waits for them, at most ``EMBED_WAIT_S``. ``budget`` gives the
    tokens one embedding decode may pack so that it holds the loop about as long as a step that
    evaluates a prompt chunk (``StepClock.mixed_budget``)."""

    def __init__(self, budget: Callable[[], int]) -> None:
        self.budget = budget
        self._cond = threading.Condition()
        self._running = False  # a decode holds the turn
        self._ready = 0  # embedding decodes that wait only for the running one to end
        self._short = False  # the loop is serving short requests
        self.busy = False  # the loop has requests in its slots (set by the loop before each step)

    def serving_short(self, short: bool) -> None:
        """Called by the loop before each step (and when it goes idle)."""
        if short == self._short:
            return
        with self._cond:
            self._short = short
            self._cond.notify_all()

    @contextmanager
    def step(self) -> Iterator[None]:
        """The loop's turn: after the running decode and the embedding decodes that are ready."""
        with self._cond:
            while self._running or self._ready:
                self._cond.wait()
            self._running = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def embedding(self) -> Iterator[None]:
        """An embedding decode's turn: before the loop's next step, once short requests are served.
        One already waiting for the running step gives way again when a short request is admitted
        meanwhile (the loop marks it before that request's first step)."""
        deadline = time.monotonic() + EMBED_WAIT_S
        with self._cond:
            while True:
                left = deadline - time.monotonic()
                if self._short and left > 0:
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
            self._running = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
