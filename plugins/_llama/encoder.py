"""The media encoder thread: runs the projector on queued image and audio spans while the batching loop
keeps decoding other sequences."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

from corral.errors import BackendError, CorralError

from .priority import lower_this_thread
from .projector import MediaSpan, Projector

__all__ = ["MediaEncoder"]


class MediaEncoder:
    """One thread per loaded projector (an mtmd context encodes one chunk at a time).

    Spans go ``new -> queued -> encoding -> done | failed``; ``release`` moves a span that is no longer
    wanted to ``dropped`` from any state, and this class frees its mtmd chunk exactly once.
    ``on_ready`` is called (without the lock) after each span finishes, to wake the batching loop.
    """

    def __init__(self, projector: Projector, on_ready: Callable[[], None]) -> None:
        self._projector = projector
        self._on_ready = on_ready
        self._lock = threading.Condition()
        self._queue: deque[MediaSpan] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="corral-media-encoder", daemon=True)
        self._thread.start()

    def submit(self, spans: Iterable[MediaSpan]) -> None:
        """Queue the spans that still need their embeddings, in prompt order."""
        with self._lock:
            for span in spans:
                if span.state == "new":
                    span.state = "queued"
                    self._queue.append(span)
            self._lock.notify()

    def release(self, spans: Iterable[MediaSpan]) -> None:
        """The request is over: free what it holds (a span being encoded is dropped when done)."""
        drop = []
        with self._lock:
            for span in spans:
                if span.state == "queued":
                    self._queue.remove(span)
                if span.state != "encoding":
                    drop.append(span)
                span.state = "dropped"
                span.embd = None
        for span in drop:
            self._projector.drop_chunk(span)

    def close(self) -> None:
        """Stop after the chunk being encoded (if any); free what is still queued. Idempotent."""
        with self._lock:
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            for span in queued:
                span.state = "dropped"
            self._lock.notify_all()
        for span in queued:
            self._projector.drop_chunk(span)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        # Encoding runs on CPU time that token generation leaves over: an image must never stall the
        # streams that are already answering (ggml's worker threads inherit this class).
        lower_this_thread()
        while True:
            with self._lock:
                while not self._closed and not self._queue:
                    self._lock.wait()
                if self._closed:
                    return
                span = self._queue.popleft()
                span.state = "encoding"
            embd, error = None, None
            try:
                embd = self._projector.encode(span)
            except CorralError as exc:
                error = exc
            except Exception as exc:  # a native failure fails this request, not the thread
                error = BackendError(f"encoding the {span.kind} failed: {exc}")
            with self._lock:
                dropped = span.state == "dropped"
                if not dropped:
                    span.embd, span.error = embd, error
                    span.state = "failed" if error is not None else "done"
            self._projector.drop_chunk(span)  # the embeddings (or the error) are all the loop needs
            if not dropped:
                self._on_ready()
