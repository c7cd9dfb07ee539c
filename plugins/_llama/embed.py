"""Pooled embeddings: an embeddings-only llama_context whose decodes pack many inputs, one sequence
each, from every request waiting."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from typing import Any

import numpy as np

from corral.errors import (
    BackendError,
    CapabilityError,
    ContextLengthError,
    CorralError,
    GenerationCancelledError,
    InsufficientMemoryError,
    InvalidRequestError,
)
from corral.types import CancelToken, EmbeddingResult, LoadOptions
from corral_plugins._llama.model import LlamaModel
from corral_plugins._llama.turns import ComputeTurns

__all__ = ["MAX_SEQS", "SIDE_CONTEXT", "Embedder", "embed_context", "embed_params"]

MAX_SEQS = 64  # inputs one decode may pack (each is a sequence; llama.cpp allows 256)
# How long one embedding decode may hold a batching loop that has requests in its slots: about one of its
# decode steps, so a request arriving meanwhile waits little.
BUSY_LOOP_HOLD_S = 0.05
# How long one may hold an idle loop: a request that arrives meanwhile stops the decode rather than
# waits for it (Batcher.submit), so this bounds only the work done again after such a stop.
IDLE_LOOP_HOLD_S = 2.0
# Tokens of one input to a generative model's embedding context (compat(ollama): its embedding batch is
# min(2048, num_ctx)). A decode takes its inputs whole, so the context is one micro-batch and its
# attention buffers grow with the square of its size: at Gemma 3's 32k default, 36 GiB.
SIDE_CONTEXT = 2048


def embed_context(options: LoadOptions, n_ctx_train: int) -> int:
    """Tokens of the embedding context, the most one input may have: a model loaded for embeddings
    gets its whole context; a generative model at most ``SIDE_CONTEXT``, beside the one it generates
    with."""
    n_ctx = max(64, min(int(options.num_ctx), n_ctx_train or int(options.num_ctx)))
    return n_ctx if options.embedding else min(n_ctx, SIDE_CONTEXT)


class _Work:
    """One ``embed`` call's inputs and, once a decode ran them, their vectors (or the error)."""

    __slots__ = ("alone", "cancel", "error", "inputs", "normalize", "vectors")

    def __init__(self, inputs: list[list[int]], normalize: bool, alone: bool,
                 cancel: CancelToken | None = None) -> None:
        self.inputs = inputs
        self.cancel = cancel
        self.normalize = normalize
        self.alone = alone  # each input in a decode of its own
        self.vectors: list[list[float] | None] = [None] * len(inputs)
        self.error: BaseException | None = None


def embed_params(lib: Any, options: LoadOptions, n_ctx_train: int, pooling: str, n_threads: int = 0) -> Any:
    """The ``llama_context_params`` of an embedding context (the memory estimate uses the same)."""
    n_ctx = embed_context(options, n_ctx_train)
    cp = lib.llama_context_default_params()
    cp.embeddings = True
    cp.n_ctx = n_ctx
    # Pooling is per sequence, and non-causal models need every input whole in one micro-batch
    # (llama.cpp asserts on it), so batch = micro-batch = context, and an input fits it whole.
    cp.n_batch = cp.n_ubatch = n_ctx
    cp.n_seq_max = MAX_SEQS
    cp.kv_unified = True  # a causal model's cache: all cells for whichever inputs share a decode
    if n_threads > 0:
        cp.n_threads = cp.n_threads_batch = n_threads
    # A model without its own pooling (a causal LM) is mean-pooled: the hidden states averaged.
    if pooling == "none":
        cp.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
    return cp


class Embedder:
    """One context with ``embeddings=true``. Calls queue their inputs; whichever call holds the context
    runs everything queued, packing inputs of several calls into each decode (as llama-server fills
    its batch across slots), so concurrent requests share decodes instead of waiting their turn.

    Packing changes the kernels' rounding, as it does in llama-server: a text's vector depends on its
    neighbours in the last float digits (f32), which a quantized model's layers amplify (Gemma 3 270M
    Q4_K, 64 inputs a decode: cosine >= 0.999 to the input decoded alone; ``tests/plugins``).
    """

    def __init__(self, model: LlamaModel, options: LoadOptions, n_threads: int = 0,
                 turns: ComputeTurns | None = None) -> None:
        self.model = model
        # the model's batching loop, when it has one: decodes take turns with its steps and pack at
        # most what a step with a prompt chunk evaluates (one longer input is a decode of its own)
        self._turns = turns
        self.ffi, self.lib = ffi, lib = model.ffi, model.lib
        cp = embed_params(lib, options, model.info.n_ctx_train, model.info.pooling, n_threads)
        ctx = lib.llama_init_from_model(model.ptr, cp)
        if ctx == ffi.NULL:  # llama.cpp's log says which buffer it could not allocate
            raise InsufficientMemoryError(f"llama.cpp could not allocate an embedding context of {cp.n_ctx} "
                                          "tokens for this model (out of memory?)")
        self.ctx = ctx
        model.apply_adapters(ctx)
        self.n_batch = int(lib.llama_n_batch(ctx))
        self.n_seq = min(MAX_SEQS, int(lib.llama_n_seq_max(ctx)))
        self.n_embd = int(lib.llama_model_n_embd_out(model.ptr)) or model.info.n_embd
        self.pooling = int(lib.llama_pooling_type(ctx))
        if self.pooling == lib.LLAMA_POOLING_TYPE_NONE:
            self.close()
            raise CapabilityError("this model gives no pooled embeddings")
        self.dim = int(lib.llama_model_n_cls_out(model.ptr)) if self.pooling == lib.LLAMA_POOLING_TYPE_RANK \
            else self.n_embd
        raw = lib.llama_batch_init(self.n_batch, 0, 1)
        self._batch = ffi.new("llama_batch *", raw)
        self._lock = threading.Lock()  # held by the call that runs the context
        self._queued: list[_Work] = []
        self._queue_lock = threading.Lock()
        self._per_token = 0.0  # seconds one token of a decode takes (moving average), 0 until measured
        self.preempted = 0  # decodes stopped for a short request (each is done again)
        if turns is not None:  # a decode a short request arrives during stops (ComputeTurns.preempt)
            lib.llama_set_abort_callback(ctx, lib.corral_abort_flag_ptr(), turns.stop)

    def embed(self, inputs: list[list[int]], normalize: bool, alone: bool = False,
              cancel: CancelToken | None = None) -> EmbeddingResult:
        """One vector per token list, in order; L2-normalised when ``normalize``; with ``alone`` each
        input is decoded by itself (no neighbours' rounding: reranking matches llama-server's scores).
        ``cancel`` is checked between decodes: once it is set, the rest of this call's inputs are
        dropped and it raises ``GenerationCancelledError``."""
        if self.ctx == self.ffi.NULL:
            raise BackendError("the embedding context was closed (model unloaded)")
        for i, toks in enumerate(inputs):
            if not toks:
                raise InvalidRequestError(f"input {i} has no tokens")
            if len(toks) > self.n_batch:
                raise ContextLengthError(f"input {i} has {len(toks)} tokens, more than the context of "
                                         f"{self.n_batch}; truncate it or load with a larger num_ctx")
            self.model._check_tokens(toks)
        work = _Work(inputs, normalize, alone, cancel)
        with self._queue_lock:
            self._queued.append(work)
        with self._lock:
            # An earlier holder may have taken this call's inputs with its own; if not, this call
            # runs everything queued now, its own inputs included.
            with self._queue_lock:
                taken, self._queued = self._queued, []
            if taken:
                self._run_all(taken)
        if work.error is not None:
            raise work.error
        vectors = [v for v in work.vectors if v is not None]
        if len(vectors) != len(inputs):  # pragma: no cover - _run_all fills every input or fails it
            raise BackendError("internal error: an embedding input was not evaluated")
        return EmbeddingResult(embeddings=vectors, prompt_tokens=sum(len(t) for t in inputs))

    def _run_all(self, works: list[_Work]) -> None:
        """Every input of ``works`` in as few decodes as the batch and the sequence count allow, in
        order; a failed decode fails the calls whose inputs it held and those after them."""
        todo = [(w, i) for w in works for i in range(len(w.inputs))]
        k = 0
        stopped = False  # the last decode was preempted: its retry is not
        try:
            while k < len(todo):
                first = todo[k][0]
                if first.cancel is not None and first.cancel.cancelled:  # its client left: skip the rest
                    if first.error is None:
                        done = sum(v is not None for v in first.vectors)
                        first.error = GenerationCancelledError(
                            f"embedding cancelled after {done} of {len(first.inputs)} inputs: the client "
                            "disconnected")
                    k += 1
                    continue
                n_tok, end = 0, k
                most = 1 if todo[k][0].alone else self.n_seq
                limit = self._limit(after_stop=stopped)
                while end < len(todo) and end - k < most:
                    w, i = todo[end]
                    if end > k and (n_tok + len(w.inputs[i]) > limit or w.alone):
                        break
                    n_tok += len(w.inputs[i])
                    end += 1
                group = todo[k:end]
                vectors = self._decode([w.inputs[i] for w, i in group], may_stop=not stopped)
                stopped = vectors is None
                self.preempted += stopped
                if vectors is None:
                    continue
                for (w, i), v in zip(group, vectors, strict=True):
                    if w.normalize:
                        norm = float(np.linalg.norm(v))
                        if norm > 0:
                            v = v / norm
                    w.vectors[i] = v.tolist()
                k = end
        except BaseException as exc:
            for w, _ in todo[k:]:
                w.error = exc if isinstance(exc, CorralError) else BackendError(f"embedding failed: {exc}")
            if not isinstance(exc, CorralError):
                raise

    def _limit(self, after_stop: bool = False) -> int:
        """Tokens the next decode may pack: all the batch holds, or beside a batching loop what keeps
        it waiting about as long as one of its steps (no more than its prompt chunks) while it serves
        requests, and ``IDLE_LOOP_HOLD_S`` while it is idle (a prompt chunk's worth until measured).
        The hold is timed with the decode's own measured cost, not the loop's prompt-token cost:
        llama.cpp evaluates a causal model's output layer for every token of an embedding decode, and
        a 262k vocabulary makes such a token cost several prompt tokens (Gemma 3 270M, 2 cores: about
        4 ms against 1.5). Larger decodes cost less a token: at an idle loop 27 short inputs a decode
        made 256 of them 1.16x llama-server's speed, where 2 a decode made them 0.87x. A decode done
        again ``after_stop`` packs as for a busy loop: the request that stopped it is about to be
        served, and this one is not stopped again (it may go before that request's first step)."""
        turns = self._turns
        if turns is None:
            return self.n_batch
        busy = turns.busy or after_stop
        limit = min(self.n_batch, turns.budget()) if busy or self._per_token <= 0 else self.n_batch
        if self._per_token > 0:
            limit = min(limit, int((BUSY_LOOP_HOLD_S if busy else IDLE_LOOP_HOLD_S) / self._per_token))
        return max(1, limit)

    def _decode(self, inputs: list[list[int]], may_stop: bool = False) -> list[np.ndarray] | None:
        """One decode of ``inputs`` (sequence ``s`` = input ``s``, each from position 0): their
        pooled vectors, or None when ``may_stop`` and a short request preempted it."""
        ffi, lib = self.ffi, self.lib
        tokens = np.concatenate([np.asarray(t, dtype=np.int32) for t in inputs])
        pos = np.concatenate([np.arange(len(t), dtype=np.int32) for t in inputs])
        seq = np.concatenate([np.full(len(t), s, dtype=np.int32) for s, t in enumerate(inputs)])
        logits = np.ones(len(tokens), dtype=np.int8)  # pooling needs every token's output
        n = len(tokens)
        filled = lib.corral_batch_fill(
            self._batch, self.n_batch, ffi.from_buffer("llama_token[]", tokens),
            ffi.from_buffer("llama_pos[]", pos), ffi.from_buffer("llama_seq_id[]", seq),
            ffi.from_buffer("int8_t[]", logits), n)
        if filled != n:
            raise BackendError("embedding batch does not fit")
        mem = lib.llama_get_memory(self.ctx)
        if mem != ffi.NULL:
            lib.llama_memory_clear(mem, True)
        turns = self._turns
        with turns.embedding(may_stop) if turns is not None else nullcontext():
            if turns is not None and turns.stopped:
                return None  # a short request was queued as this decode took its turn
            t0 = time.perf_counter()
            rc = lib.llama_encode(self.ctx, self._batch[0]) if self.model.info.has_encoder \
                else lib.llama_decode(self.ctx, self._batch[0])
            per = (time.perf_counter() - t0) / n
        if rc == 2 and may_stop:
            return None
        self._per_token = per if self._per_token == 0 else 0.7 * self._per_token + 0.3 * per
        if rc != 0:
            raise BackendError(f"llama.cpp failed to evaluate the embedding input (code {rc})")
        out = []
        for s in range(len(inputs)):
            p = lib.llama_get_embeddings_seq(self.ctx, s)
            if p == ffi.NULL:
                raise BackendError("llama.cpp returned no pooled embedding")
            out.append(np.frombuffer(ffi.buffer(p, self.dim * 4), dtype=np.float32).astype(np.float64))
        if mem != ffi.NULL:
            lib.llama_memory_clear(mem, True)
        return out

    def close(self) -> None:
        """Free the batch and the context; a second call does nothing."""
        if getattr(self, "_batch", None) is not None:
            self.lib.llama_batch_free(self._batch[0])
            self._batch = None
        if self.ctx != self.ffi.NULL:
            self.lib.llama_free(self.ctx)
            self.ctx = self.ffi.NULL

