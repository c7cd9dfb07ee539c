"""ggml's x86 CPU variants and how a CPU's flags score them (stdlib only: build_backends.py loads it too).

The table mirrors the variants ggml's CMake builds with GGML_CPU_ALL_VARIANTS and the score its
``ggml_backend_score`` computes at run time (cpu-feats.cpp), so the build can compile the variant this
machine will choose, and the plugin can say which one it expected, before any library exists.
"""

from __future__ import annotations

import platform
from pathlib import Path

BASELINE = "x64"

# variant -> the GGML_<FEATURE> switches it is compiled with (ggml/src/CMakeLists.txt at the pin)
X86_VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
             "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
                       "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"),
}

# feature -> (/proc/cpuinfo flags it needs, the bit ggml's score adds); AMX_TILE is implied by AMX_INT8
_FEATURES: dict[str, tuple[tuple[str, ...], int]] = {
    "FMA": (("fma",), 1),
    "F16C": (("f16c",), 1 << 1),
    "SSE42": (("sse4_2",), 1 << 2),
    "BMI2": (("bmi2",), 1 << 3),
    "AVX": (("avx",), 1 << 4),
    "AVX2": (("avx2",), 1 << 5),
    "AVX_VNNI": (("avx_vnni",), 1 << 6),
    "AVX512": (("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), 1 << 7),
    "AVX512_VBMI": (("avx512vbmi",), 1 << 8),
    "AVX512_BF16": (("avx512_bf16",), 1 << 9),
    "AVX512_VNNI": (("avx512_vnni",), 1 << 10),
    "AMX_TILE": (("amx_tile",), 0),
    "AMX_INT8": (("amx_int8",), 1 << 11),
}

# Instructions some hypervisors advertise and then fault on (SIGILL): a build that picks a variant
# using them also builds the best variant without them, so the run-time check has a fast fallback.
RISKY_FEATURES = frozenset({"AMX_TILE", "AMX_INT8"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The first ``flags`` line of /proc/cpuinfo, or None where there is none (not Linux x86)."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def score(variant: str, flags: frozenset[str]) -> int:
    """ggml's score for ``variant`` on a CPU with ``flags``: 0 when an instruction it needs is missing."""
    total = 1
    for feat in X86_VARIANTS[variant]:
        needs, bit = _FEATURES[feat]
        if not all(flag in flags for flag in needs):
            return 0
        total += bit
    return total


def ranked(flags: frozenset[str]) -> list[str]:
    """The variants this CPU runs, best first (ggml's order when scores tie: the table's)."""
    usable = [v for v in X86_VARIANTS if score(v, flags) > 0]
    return sorted(usable, key=lambda v: -score(v, flags))


def build_choice(flags: frozenset[str] | None) -> list[str]:
    """The variants a default build compiles: the best for this CPU (plus the best without instructions
    that hypervisors are known to fault on, if the best uses them) and the portable baseline."""
    if flags is None:
        return [BASELINE]
    order = ranked(flags)
    picked: list[str] = order[:1]
    if picked and RISKY_FEATURES & set(X86_VARIANTS[picked[0]]):
        safe = next((v for v in order if not RISKY_FEATURES & set(X86_VARIANTS[v])), None)
        if safe:
            picked.append(safe)
    if BASELINE not in picked:
        picked.append(BASELINE)
    return picked


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")
