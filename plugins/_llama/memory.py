"""What a model takes on each device as llama.cpp counts it, before loading (measured without allocating)
and after (the live context's breakdown), and llama.cpp's fit of offloaded layers to per-device limits."""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgspec

from corral.errors import ModelLoadError
from corral.types import HOST, DeviceMemory, LoadOptions, MemoryEstimate, MemoryUsage

from .context import context_params, sequences
from .draftmodel import DEFAULT_DRAFT_TOKENS
from .embed import embed_params
from .model import ModelParams, check_gguf
from .projector import projector_params

__all__ = ["estimate", "fit_layers", "measured", "usage"]

log = logging.getLogger("corral.llama")

_MAX_ENTRIES = 64  # devices in one breakdown: the host, GPUs, and up to 16 RPC workers' devices
_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
# llama.cpp's fit swaps the process-wide llama log callback while it measures: one at a time.
_fit_lock = threading.Lock()


def _devices(native: Any, buf: Any, n: int) -> list[DeviceMemory]:
    ffi = native.ffi
    rpc = {d.name for d in native.rpc_devices()}
    out = []
    for i in range(n):
        e = buf[i]
        name = ffi.string(e.name).decode("utf-8", "replace")
        kind = "rpc" if name in rpc else _TYPES.get(int(e.type), "accel")
        out.append(DeviceMemory(device=name, type=kind, weights=int(e.model), kv_cache=int(e.context),
                                compute=int(e.compute), free=int(e.free), total=int(e.total)))
    return out


def _merge(a: list[DeviceMemory], b: list[DeviceMemory]) -> list[DeviceMemory]:
    """``a`` with ``b``'s bytes added device by device (devices only in ``b`` appended)."""
    out = {d.device: d for d in a}
    for d in b:
        have = out.get(d.device)
        out[d.device] = d if have is None else DeviceMemory(
            device=have.device, type=have.type, weights=have.weights + d.weights,
            kv_cache=have.kv_cache + d.kv_cache, compute=have.compute + d.compute, free=have.free,
            total=have.total)
    return list(out.values())


# Rows of logits reserved for drafted tokens per sequence the context holds: llama.cpp reserves compute
# memory for every row a step may return, so the reservation is as it was when each sequence drafted
# at most 16 tokens, while one sequence may now take the rows others leave (up to MAX_DRAFT).
DRAFT_ROWS_PER_SEQUENCE = 16


def draft_rows(options: LoadOptions, has_draft: bool) -> int:
    """Rows of logits for drafted tokens per step of the batching loop's context, shared by its
    sequences (the Batcher's rule); none without speculation."""
    n_draft = int(options.draft_num_predict)
    if not options.speculative or n_draft == 0:
        return 0
    per_sequence = max(n_draft if n_draft > 0 else DRAFT_ROWS_PER_SEQUENCE,
                       (n_draft if n_draft > 0 else DEFAULT_DRAFT_TOKENS) if has_draft else 0)
    return sequences(options) * per_sequence


def _context_params(native: Any, path: str, options: LoadOptions) -> Any:
    if not options.embedding:
        return context_params(native, options, draft_rows(options, bool(options.draft)))
    kv = check_gguf(path).kv
    arch = str(kv.get("general.architecture", ""))
    n_ctx_train = kv.get(f"{arch}.context_length")
    pooling = kv.get(f"{arch}.pooling_type")
    return embed_params(native.lib, options, n_ctx_train if isinstance(n_ctx_train, int) else 0,
                        "none" if not isinstance(pooling, int) or pooling == 0 else "pooled")


def _projector(native: Any, options: LoadOptions) -> list[DeviceMemory]:
    if not options.projector:
        return []
    check_gguf(options.projector)
    ffi, lib = native.ffi, native.lib
    buf = ffi.new("struct corral_device_memory[]", _MAX_ENTRIES)
    params = ffi.new("struct mtmd_context_params *", projector_params(lib, options))
    n = lib.corral_projector_memory(options.projector.encode(), params, buf, _MAX_ENTRIES)
    if n < 0:
        raise ModelLoadError(f"llama.cpp could not measure the projector {options.projector}")
    return _devices(native, buf, n)


def estimate(native: Any, path: str, options: LoadOptions) -> MemoryEstimate:
    """What loading ``path`` with ``options`` takes on each device (the host first), measured by
    llama.cpp's no-alloc load of the model and a context made exactly as the load makes it."""
    check_gguf(path)  # the bounded reader first, as for a real load
    ffi, lib = native.ffi, native.lib
    params = ModelParams(native, options)
    cp = ffi.new("struct llama_context_params *", _context_params(native, path, options))
    buf = ffi.new("struct corral_device_memory[]", _MAX_ENTRIES)
    n_layer = ffi.new("int32_t *")
    with _fit_lock:
        n = lib.corral_measure(path.encode(), params.ptr, cp, buf, _MAX_ENTRIES, n_layer)
    if n == -1:
        raise ModelLoadError(f"llama.cpp could not read {path} to measure it (see the log)")
    if n < 0:
        raise ModelLoadError("llama.cpp could not size a context for this model (see the log)")
    devices = _merge(_devices(native, buf, n), _projector(native, options))
    if options.draft and options.speculative and options.draft_num_predict != 0 and not options.embedding:
        devices = _merge(devices, _draft(native, options))
    return MemoryEstimate(devices=tuple(devices), n_layer=int(n_layer[0]))


def _draft(native: Any, options: LoadOptions) -> list[DeviceMemory]:
    """The draft model and its context, measured as they load beside the model (draftmodel.py)."""
    check_gguf(options.draft)
    ffi, lib = native.ffi, native.lib
    opts = msgspec.structs.replace(options, adapters=(), tensor_split=(), projector="", draft="")
    params = ModelParams(native, opts)
    cp = ffi.new("struct llama_context_params *", context_params(native, opts))
    buf = ffi.new("struct corral_device_memory[]", _MAX_ENTRIES)
    n_layer = ffi.new("int32_t *")
    with _fit_lock:
        n = lib.corral_measure(options.draft.encode(), params.ptr, cp, buf, _MAX_ENTRIES, n_layer)
    if n < 0:
        raise ModelLoadError("llama.cpp could not measure the draft model (see the log)")
    return _devices(native, buf, n)


def fit_layers(native: Any, path: str, options: LoadOptions, params: ModelParams,
               limits: dict[str, int]) -> None:
    """Let llama.cpp's fit (common_fit_params, llama-server's --fit) choose how many layers ``params``
    offloads, and how they split, so each device in ``limits`` keeps what is beyond its limit free.

    Only when ``options.num_gpu`` is -1 and no ``tensor_split`` was given (the user's values are never
    changed), and only over devices other than the host. Raises ``ModelLoadError`` when even the
    fewest layers do not fit.
    """
    if options.num_gpu != -1 or options.tensor_split or options.embedding:
        return
    ffi, lib = native.ffi, native.lib
    offload = [d for d in native.devices() if d.type != "cpu"]
    if not offload or not any(d.name in limits for d in offload):
        return
    # llama.cpp's margin: what must stay free on each device, in the model's device order (the split
    # devices); a device without a limit keeps llama.cpp's own default margin.
    order = [d for d in native.split_devices()]
    margins = ffi.new("size_t[]", max(1, len(order)))
    for i, d in enumerate(order):
        limit = limits.get(d.name)
        margins[i] = max(0, d.memory_free - limit) if limit is not None else 1 << 30
    rows = draft_rows(options, bool(options.draft))  # the real context's logit rows for drafts
    cp = ffi.new("struct llama_context_params *", context_params(native, options, rows))
    with _fit_lock:
        status = lib.corral_fit(path.encode(), params.ptr, cp, params.split, params.overrides, margins)
    if status == 1:
        where = ", ".join(f"{d.name} {limits[d.name] >> 20} MiB" for d in order if d.name in limits)
        raise ModelLoadError(f"the model does not fit the memory it may use ({where}) even with layers "
                             "left on the host; lower num_ctx or unload other models")
    if status != 0:
        raise ModelLoadError("llama.cpp could not fit the model to the devices' memory (see the log)")
    log.info("fitted to memory limits: %d layers offloaded", int(params.ptr.n_gpu_layers))


def measured(native: Any, ctx: Any) -> list[DeviceMemory]:
    """What a live context (and the model it was made from) holds on each device, host first."""
    ffi, lib = native.ffi, native.lib
    buf = ffi.new("struct corral_device_memory[]", _MAX_ENTRIES)
    n = lib.corral_context_memory(ctx, buf, _MAX_ENTRIES)
    return _devices(native, buf, n) if n > 0 else []


def usage(native: Any, contexts: list[Any], options: LoadOptions, layers: int) -> MemoryUsage:
    """The handle's ``memory``: the live contexts' breakdowns (the model's, a draft model's) plus the
    projector's share."""
    devices = _projector(native, options)
    for ctx in contexts:
        devices = _merge(measured(native, ctx), devices)
    if not devices:
        return MemoryUsage(layers=layers)
    total = sum(d.used for d in devices)
    off_host = sum(d.used for d in devices if d.device != HOST)
    return MemoryUsage(total=total, vram=off_host, devices=tuple(devices), layers=layers)
