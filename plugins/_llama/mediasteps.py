"""What the batching loop does for prompts that hold images or audio: expand them, encode ahead on the
encoder thread, and decode their embedding rows into a sequence."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Any

from corral.errors import BackendError, GenerationCancelledError, InvalidRequestError
from corral.types import GenerationRequest

from .encoder import MediaEncoder
from .priority import lower_this_thread
from .projector import MediaSpan, Projector

__all__ = ["MediaSteps", "media_floor", "media_piece", "span_at"]


def span_at(spans: list[MediaSpan], i: int) -> MediaSpan | None:
    """The span covering prompt index ``i``, if any (``spans`` are in prompt order)."""
    k = bisect.bisect_right([s.start for s in spans], i) - 1
    return spans[k] if k >= 0 and spans[k].start <= i < spans[k].end else None


def next_span_start(spans: list[MediaSpan], i: int) -> int | None:
    """Where the first span at or after prompt index ``i`` starts."""
    for s in spans:
        if s.start >= i:
            return s.start
    return None


def media_piece(spans: list[MediaSpan], start: int, n: int) -> int:
    """How many prompt positions from ``start`` the next step may take (``n`` allowed by its budget):
    text stops at the next media span; a span waits (0) for its embeddings, then goes whole if its
    rows attend to each other (whatever the budget), else in pieces. A failed encode raises its error."""
    span = span_at(spans, start)
    if span is None:
        nxt = next_span_start(spans, start)
        return n if nxt is None else min(n, nxt - start)
    if span.error is not None:
        raise span.error
    if span.embd is None:
        return 0
    return span.end - start if span.non_causal else min(n, span.end - start)


def media_floor(spans: list[MediaSpan], k: int) -> int:
    """``k`` moved back to the start of the span it cuts through: a reused prefix never ends inside
    an image, whose rows are evaluated together (and for some models attend to each other)."""
    span = span_at(spans, k)
    return span.start if span is not None and span.start < k else k


class MediaSteps:
    """Owned by one ``Batcher``: its projector's encoder thread and an embedding batch."""

    def __init__(self, native: Any, projector: Projector, n_batch: int, wake: Callable[[], None]) -> None:
        self._ffi, self._lib = native.ffi, native.lib
        self.projector = projector
        self.n_batch = n_batch
        self.n_embd = projector.n_embd
        raw = self._lib.llama_batch_init(n_batch, self.n_embd, 1)
        self._batch = self._ffi.new("llama_batch *", raw)
        self.encoder = MediaEncoder(projector, wake)
        # Decoding and resizing images is untrusted, CPU-heavy work: one background-priority thread
        # does it for every request in turn, so a burst of image requests cannot crowd out decoding.
        self._prepare = ThreadPoolExecutor(1, thread_name_prefix="corral-media-prepare",
                                           initializer=lower_this_thread)
        self._freed = False

    def expand(self, request: GenerationRequest) -> tuple[list[int], list[MediaSpan]]:
        """Prompt keys and media spans for ``request``; the caller waits while the media are decoded and
        preprocessed on the background thread (never on the loop's)."""
        unloading = GenerationCancelledError("the model is being unloaded; retry the request")
        try:
            future = self._prepare.submit(self.projector.expand, request)
        except RuntimeError:  # the pool is shut down
            raise unloading from None
        try:
            keys, spans = future.result()
        except CancelledError:
            raise unloading from None
        for span in spans:
            if span.non_causal and span.n > self.n_batch:
                self.encoder.release(spans)
                raise InvalidRequestError(f"this model reads each image as {span.n} tokens at once; load it "
                                          f"with num_batch of at least {span.n}")
        return keys, spans

    def admitted(self, spans: list[MediaSpan], keep: int) -> None:
        """A job took a slot with ``keep`` prompt positions cached: media already in the cache need no
        encoding; the rest are queued now, so encoding overlaps the text before them."""
        self.encoder.release([s for s in spans if s.end <= keep])
        self.encoder.submit(s for s in spans if s.end > keep)

    def release(self, spans: list[MediaSpan]) -> None:
        self.encoder.release(spans)

    def decode(self, ctx: Any, span: MediaSpan, start: int, n: int, seq: int, logits_last: bool) -> int:
        """``llama_decode`` rows ``[start, start + n)`` of the prompt (all inside ``span``) into ``seq``."""
        assert span.embd is not None
        rows = span.embd[start - span.start : start - span.start + n]
        lib = self._lib
        data = self._ffi.from_buffer("float[]", rows)
        filled = lib.corral_batch_fill_embd(self._batch, self.n_batch, self.n_embd, data, start, seq,
                                            logits_last, n)
        if filled != n:
            raise BackendError("internal error: media batch larger than n_batch")
        if not span.non_causal:
            return int(lib.llama_decode(ctx, self._batch[0]))
        # Gemma 3's image rows attend to each other: one non-causal batch holding the whole image.
        lib.llama_set_causal_attn(ctx, False)
        try:
            return int(lib.llama_decode(ctx, self._batch[0]))
        finally:
            lib.llama_set_causal_attn(ctx, True)

    def close(self) -> None:
        """Stop the media threads and free the batch (the projector is freed by its owner)."""
        self._prepare.shutdown(wait=True, cancel_futures=True)
        self.encoder.close()
        if not self._freed:
            self._freed = True
            self._lib.llama_batch_free(self._batch[0])
