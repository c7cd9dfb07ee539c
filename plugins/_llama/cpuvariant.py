"""Choose the CPU backend variant for this machine: best score first, verified in a child process, cached."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import BackendError
from corral_plugins._llama.assets import cache_dir
from corral_plugins._llama.cpucheck import variant_files, variant_name
from corral_plugins._llama.cpufeatures import BASELINE

log = logging.getLogger("corral.llama.cpu")

CACHE_NAME = "cpu-variant.json"
CHECK_TIMEOUT = 180.0  # a cold page cache on a slow disk can make the first model load take a while
SCORE_TIMEOUT = 60.0


@dataclass
class VariantChoice:
    """The variant to load, and what happened to the better-scoring ones."""

    name: str
    path: Path
    scores: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # name -> why
    source: str = "verified"  # verified | cache | override


def build_id(lib_dir: Path) -> str:
    """Identity of a build folder: build-info.json if present, else the variants' names, sizes and mtimes."""
    info = lib_dir / "build-info.json"
    h = hashlib.sha256(str(lib_dir.resolve()).encode())
    if info.is_file():
        h.update(info.read_bytes())
    for p in variant_files(lib_dir):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cpu_id() -> str:
    """Hash of what the CPU says it supports (the first flags/Features line), plus the machine type."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    text += line
                    break
    except OSError:  # not Linux: the machine type and processor string are what we have
        text += platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _child(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("GGML_BACKEND_PATH", None)  # the check must load exactly the variant it is given
    return subprocess.run([sys.executable, "-m", "corral_plugins._llama.cpucheck", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return f"the check process was killed by {sig}"
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return f"the check failed (exit {proc.returncode}): {tail[:300]}"


def score_variants(lib_dir: Path) -> dict[str, int]:
    """{variant name: ggml_backend_score} computed in a child (dlopen of a foreign variant is not free)."""
    proc = _child(["--score", str(lib_dir)], SCORE_TIMEOUT)
    if proc.returncode != 0:
        raise BackendError(f"could not score the CPU variants in {lib_dir}: {_why(proc)}")
    raw: dict[str, int] = json.loads(proc.stdout)
    return {variant_name(Path(p)): int(s) for p, s in raw.items()}


def verify_variant(path: Path, model: Path | None = None, timeout: float = CHECK_TIMEOUT) -> str | None:
    """None if ``path`` loads a model and decodes in a child process, else why it did not."""
    args = [str(path)] + (["--model", str(model)] if model else [])
    try:
        proc = _child(args, timeout)
    except subprocess.TimeoutExpired:
        return f"the check did not finish within {timeout:.0f} s"
    if proc.returncode == 0 and proc.stdout.startswith("OK "):
        return None
    return _why(proc)


def _load_cache() -> dict[str, dict]:
    try:
        data = json.loads((cache_dir() / CACHE_NAME).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(data: dict[str, dict]) -> None:
    path = cache_dir() / CACHE_NAME
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: two processes choosing at once each write a whole file


def choose_variant(lib_dir: Path, override: str | None = None, *, model: Path | None = None,
                   use_cache: bool = True) -> VariantChoice:
    """The CPU variant to use from ``lib_dir``.

    ``override`` (CORRAL_CPU_VARIANT) names a variant to use as is. Otherwise variants are tried from
    the highest ``ggml_backend_score`` down (score 0 = the CPU lacks a required instruction); each is
    verified by loading a real model and decoding in a child process, because a CPU may advertise
    instructions that fault under its hypervisor (AMX, SIGILL). The verdict is cached per build and
    CPU flags in ~/.cache/corral/cpu-variant.json.
    """
    files = {variant_name(p): p for p in variant_files(lib_dir)}
    if not files:
        raise BackendError(f"no libggml-cpu module in {lib_dir}: run build_backends.py --backend cpu")
    if override:
        if override not in files:
            raise BackendError(f"CORRAL_CPU_VARIANT={override!r} is not in this build; "
                               f"available: {', '.join(sorted(files))}")
        return VariantChoice(name=override, path=files[override], source="override")
    key = f"{build_id(lib_dir)}:{cpu_id()}"
    cache = _load_cache() if use_cache else {}
    hit = cache.get(key)
    if hit and hit.get("variant") in files:
        return VariantChoice(name=hit["variant"], path=files[hit["variant"]], scores=hit.get("scores", {}),
                             rejected=hit.get("rejected", {}), source="cache")
    scores = score_variants(lib_dir)
    rejected: dict[str, str] = {n: "not supported by this CPU (score 0)" for n, s in scores.items() if s <= 0}
    ranked = sorted((n for n, s in scores.items() if s > 0), key=lambda n: -scores[n])
    for name in ranked:
        why = verify_variant(files[name], model)
        if why is None:
            log.info("CPU variant %s verified (score %d)", name, scores[name])
            if name == BASELINE and len(files) > 1:  # a folder built on (or for) another CPU
                log.warning("CPU variant %s is the portable baseline: the faster variant(s) in %s cannot "
                            "run on this CPU (%s); rebuild with build_backends.py for full speed", name,
                            lib_dir, "; ".join(f"{n}: {w}" for n, w in sorted(rejected.items())))
            choice = VariantChoice(name=name, path=files[name], scores=scores, rejected=rejected)
            if use_cache:
                cache = _load_cache()
                cache[key] = {"variant": name, "scores": scores, "rejected": rejected}
                _save_cache(cache)
            return choice
        log.warning("CPU variant %s rejected: %s", name, why)
        rejected[name] = why
    detail = "; ".join(f"{n}: {w}" for n, w in rejected.items() if n in ranked) or "none scored above 0"
    raise BackendError(f"no CPU variant in {lib_dir} works on this machine ({detail})")
