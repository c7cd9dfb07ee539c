"""Pooled embeddings: an embeddings-only llama_context, one decode per input for stable vectors."""

from __future__ import annotations

import threading

import numpy as np

from corral.errors import BackendError, ContextLengthError, InvalidRequestError
from corral.types import EmbeddingResult, LoadOptions
from corral_plugins._llama.model import LlamaModel

__all__ = ["Embedder"]


class Embedder:
    """One context with ``embeddings=true``; ``embed`` is serialised (a context is single-threaded)."""

    def __init__(self, model: LlamaModel, options: LoadOptions, n_threads: int = 0) -> None:
        self.model = model
        self.ffi, self.lib = ffi, lib = model.ffi, model.lib
        n_ctx = max(64, min(int(options.num_ctx), model.info.n_ctx_train or int(options.num_ctx)))
        cp = lib.llama_context_default_params()
        cp.embeddings = True
        cp.n_ctx = n_ctx
        # Each input must fit one decode (pooling is per decode), and non-causal models need the whole
        # input in one micro-batch (llama.cpp asserts on it), so batch = micro-batch = context.
        cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_seq_max = 1
        if n_threads > 0:
            cp.n_threads = cp.n_threads_batch = n_threads
        # A model without its own pooling (a causal LM) is mean-pooled: the hidden states averaged.
        if model.info.pooling == "none":
            cp.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
        ctx = lib.llama_init_from_model(model.ptr, cp)
        if ctx == ffi.NULL:
            raise BackendError("llama.cpp could not create an embedding context (out of memory?)")
        self.ctx = ctx
        model.apply_adapters(ctx)
        self.n_batch = int(lib.llama_n_batch(ctx))
        self.n_embd = int(lib.llama_model_n_embd_out(model.ptr)) or model.info.n_embd
        self.pooling = int(lib.llama_pooling_type(ctx))
        if self.pooling == lib.LLAMA_POOLING_TYPE_NONE:
            self.close()
            raise BackendError("this model gives no pooled embeddings")
        self.dim = int(lib.llama_model_n_cls_out(model.ptr)) if self.pooling == lib.LLAMA_POOLING_TYPE_RANK \
            else self.n_embd
        raw = lib.llama_batch_init(self.n_batch, 0, 1)
        self._batch = ffi.new("llama_batch *", raw)
        self._lock = threading.Lock()

    def embed(self, inputs: list[list[int]], normalize: bool) -> EmbeddingResult:
        """One vector per token list, in order; L2-normalised when ``normalize``."""
        if self.ctx == self.ffi.NULL:
            raise BackendError("the embedding context was closed (model unloaded)")
        for i, toks in enumerate(inputs):
            if not toks:
                raise InvalidRequestError(f"input {i} has no tokens")
            if len(toks) > self.n_batch:
                raise ContextLengthError(f"input {i} has {len(toks)} tokens, more than the context of "
                                         f"{self.n_batch}; truncate it or load with a larger num_ctx")
            self.model._check_tokens(toks)
        out: list[list[float]] = []
        with self._lock:
            # One decode per input: packing several into one batch changes the kernels' rounding, and
            # the same text must give the same vector whatever it was sent with.
            for toks in inputs:
                out.append(self._run(toks, normalize))
        return EmbeddingResult(embeddings=out, prompt_tokens=sum(len(t) for t in inputs))

    def _run(self, toks: list[int], normalize: bool) -> list[float]:
        ffi, lib = self.ffi, self.lib
        n = len(toks)
        tokens = np.asarray(toks, dtype=np.int32)
        pos = np.arange(n, dtype=np.int32)
        seq = np.zeros(n, dtype=np.int32)
        logits = np.ones(n, dtype=np.int8)  # pooling needs every token's output
        filled = lib.corral_batch_fill(
            self._batch, self.n_batch, ffi.from_buffer("llama_token[]", tokens),
            ffi.from_buffer("llama_pos[]", pos), ffi.from_buffer("llama_seq_id[]", seq),
            ffi.from_buffer("int8_t[]", logits), n)
        if filled != n:
            raise BackendError("embedding batch does not fit")
        mem = lib.llama_get_memory(self.ctx)
        lib.llama_memory_clear(mem, True)
        rc = lib.llama_encode(self.ctx, self._batch[0]) if self.model.info.has_encoder \
            else lib.llama_decode(self.ctx, self._batch[0])
        if rc != 0:
            raise BackendError(f"llama.cpp failed to evaluate the embedding input (code {rc})")
        p = lib.llama_get_embeddings_seq(self.ctx, 0)
        if p == ffi.NULL:
            raise BackendError("llama.cpp returned no pooled embedding")
        v = np.frombuffer(ffi.buffer(p, self.dim * 4), dtype=np.float32).astype(np.float64)
        lib.llama_memory_clear(mem, True)
        if normalize:
            norm = float(np.linalg.norm(v))
            if norm > 0:
                v = v / norm
        return v.tolist()

    def close(self) -> None:
        """Free the batch and the context; a second call does nothing."""
        if getattr(self, "_batch", None) is not None:
            self.lib.llama_batch_free(self._batch[0])
            self._batch = None
        if self.ctx != self.ffi.NULL:
            self.lib.llama_free(self.ctx)
            self.ctx = self.ffi.NULL

