"""The llama_context a batching loop decodes in: one unified KV cache for all its sequences."""

from __future__ import annotations

from typing import Any

from corral.errors import BackendError
from corral.types import LoadOptions

from .slots import default_threads

__all__ = ["KV_TYPES", "context_params", "new_context", "sequences"]

# the names corral.config.KV_CACHE_TYPES allows (checked when the config is built)
KV_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}


def sequences(options: LoadOptions) -> int:
    """Sequences a batching context holds: ``num_parallel``, and one more that only short requests
    (``GenerationRequest.short``) take when the others are busy (as the core's ``SlotPool`` leases them).
    Its cells come out of the same unified cache, so it costs no memory of its own."""
    return max(1, int(options.num_parallel)) + 1


def context_params(native: Any, options: LoadOptions, draft_rows: int = 0) -> Any:
    """The ``llama_context_params`` of the batching loop's context (``new_context`` and the memory
    estimate use the very same), returning a row of logits per sequence and step, and at most
    ``draft_rows`` more for drafted tokens, shared by the step's sequences."""
    lib = native.lib
    n_par = sequences(options)
    cp = lib.llama_context_default_params()
    # One unified KV buffer: seq_cp then shares cells instead of copying them, which is what
    # makes a common system prompt cost one evaluation for all concurrent users.
    cp.kv_unified = True
    cp.n_seq_max = n_par
    cp.n_ctx = max(256, int(options.num_ctx) * max(1, int(options.num_parallel)))
    cp.n_batch = cp.n_ubatch = max(32, n_par, int(options.num_batch))
    # One row of logits per sequence per step (a vocabulary can be 262k wide), plus one per draft token
    # while speculating: llama.cpp reserves compute memory for all of them, so drafts share one pool,
    # which lets a lone sequence draft far without every sequence reserving as much.
    cp.n_outputs_max = n_par + max(0, draft_rows)
    threads = int(options.num_thread) or default_threads()
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    cp.swa_full = True  # keep full SWA caches so prefixes stay reusable on SWA models (Gemma 3)
    if options.flash_attention is not None:
        fa = "ENABLED" if options.flash_attention else "DISABLED"
        cp.flash_attn_type = getattr(lib, f"LLAMA_FLASH_ATTN_TYPE_{fa}")
    cp.type_k = cp.type_v = getattr(lib, KV_TYPES[options.kv_cache_type])
    return cp


def new_context(native: Any, model: Any, options: LoadOptions, draft_rows: int = 0) -> Any:
    """A ``llama_context*`` for ``options.num_parallel`` sequences of ``options.num_ctx`` each, with the
    model's LoRA adapters applied, with rows of logits for ``draft_rows`` drafted tokens per step
    besides one per sequence; the caller frees it with ``llama_free``."""
    ffi, lib = native.ffi, native.lib
    ctx = lib.llama_init_from_model(model.ptr, context_params(native, options, draft_rows))
    if ctx == ffi.NULL:
        raise BackendError("llama.cpp could not create a context (out of memory? try a smaller num_ctx)")
    try:  # LoRA adapters are set per context, not per model
        model.apply_adapters(ctx)
    except BaseException:
        lib.llama_free(ctx)
        raise
    return ctx
