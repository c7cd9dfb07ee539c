"""Hardware probe of the cpu backend: a built folder and a CPU variant that verifiably runs here."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from corral.config import Config
from corral.memory import host_memory
from corral.types import DeviceInfo
from corral_plugins._llama.backend import Probe
from corral_plugins._llama.cpuvariant import choose_variant


def not_built(backend: str, lib_dir: Path) -> str | None:
    """Why ``lib_dir`` cannot be used (nothing built, or no cffi module), else None."""
    if not lib_dir.is_dir() or not any(lib_dir.glob("libllama*")):
        return f"not built: run build_backends.py --backend {backend}"
    if not any(p.suffix in (".so", ".pyd", ".dylib") for p in lib_dir.glob("_llama_*")):
        return f"the cffi module is missing from {lib_dir}: run build_backends.py --backend {backend}"
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def cpu_device() -> DeviceInfo:
    free, total = host_memory()
    return DeviceInfo(name="CPU", description=cpu_name(), type="cpu", memory_total=total, memory_free=free)


def probe_cpu(lib_dir: Path, config: Config) -> Probe:
    why = not_built("cpu", lib_dir)
    if why:
        return Probe(False, why)
    choice = choose_variant(lib_dir, config.cpu_variant)
    how = {"override": "set by CORRAL_CPU_VARIANT", "cache": "verified earlier",
           "verified": "verified now"}[choice.source]
    return Probe(True, f"CPU variant {choice.name} ({how})", [choice.path], [cpu_device()])
