"""Quantize an F32/F16/BF16 GGUF to q4_K_M, q4_K_S or q8_0 with llama_model_quantize."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from corral.errors import BackendError, InvalidRequestError
from corral.gguf import read_gguf_info
from corral_plugins._llama.library import Native

# Ollama's accepted names (case-insensitive) -> the llama_ftype constant.
TARGETS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
           "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
# general.file_type values a source may have: ALL_F32, MOSTLY_F16, MOSTLY_BF16.
SOURCE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}
_FLOAT_TENSORS = {0, 1, 30}  # ggml types F32, F16, BF16


def source_type(path: str | Path) -> str:
    """F32/F16/BF16 for a quantizable source; ``InvalidRequestError`` for anything else."""
    info = read_gguf_info(path, keep_arrays=False)
    ft = info.kv.get("general.file_type")
    if ft is not None:
        try:
            name = SOURCE_TYPES.get(int(ft))
        except (TypeError, ValueError):
            name = None
        if name is None:
            raise InvalidRequestError("quantization needs an F32, F16 or BF16 source model; "
                                      f"this one has file type {ft!r} (already quantized?)")
        return name
    # No file type recorded: judge by the weights themselves (2-D tensors must all be float).
    kinds = {t.type for t in info.tensors if len(t.shape) >= 2}
    if not kinds or not kinds <= _FLOAT_TENSORS:
        raise InvalidRequestError("quantization needs an F32, F16 or BF16 source model")
    return "F16" if kinds == {1} else "BF16" if kinds == {30} else "F32"


def quantize(native: Native, source: str | Path, destination: str | Path, file_type: str,
             progress: Callable[[float], bool] | None = None, n_threads: int = 0) -> bool:
    """Write ``destination`` as ``file_type`` from ``source``; the destination appears only when done.

    llama_model_quantize has no progress callback: ``progress`` gets 0.0 before and 1.0 after (a
    False at the start cancels). The output is written to a temporary name and renamed into place,
    so a failure never leaves a half-written model at ``destination``.
    """
    target = TARGETS.get(file_type.lower())
    if target is None:
        raise InvalidRequestError(f"unsupported quantization {file_type!r}; use one of q4_K_M, q4_K_S, q8_0")
    source_type(source)
    dest = Path(destination)
    if not dest.parent.is_dir():
        raise InvalidRequestError(f"destination folder {dest.parent} does not exist")
    if progress is not None and progress(0.0) is False:
        return False
    ffi, lib = native.ffi, native.lib
    params = ffi.new("llama_model_quantize_params *", lib.llama_model_quantize_default_params())
    params.ftype = getattr(lib, target)
    params.nthread = n_threads if n_threads > 0 else (os.cpu_count() or 1)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        rc = lib.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise BackendError(f"llama.cpp could not quantize {source} (code {rc}; see the log)")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    if progress is not None:
        progress(1.0)
    return True
