"""Hardware probe of the metal backend: macOS on Apple Silicon with a built folder."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from corral.config import Config
from corral.types import DeviceInfo
from corral_plugins._llama.backend import Probe
from corral_plugins._llama.cpuvariant import choose_variant
from corral_plugins.cpu.probe import not_built


def probe_metal(lib_dir: Path, config: Config) -> Probe:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        here = f"{sys.platform} {platform.machine()}"
        return Probe(False, f"Metal needs macOS on Apple Silicon (this is {here})")
    why = not_built("metal", lib_dir)
    if why:
        return Probe(False, why)
    modules = sorted(lib_dir.glob("libggml-metal.*"))
    if not modules:
        return Probe(False, f"no libggml-metal in {lib_dir}: run build_backends.py --backend metal")
    extra = sorted(lib_dir.glob("libggml-blas.*"))[:1]  # Accelerate BLAS, when the build has it
    choice = choose_variant(lib_dir, config.cpu_variant)
    try:
        total = int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                   timeout=5).stdout.strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        total = 0
    # Apple Silicon memory is unified: the GPU may use most of RAM.
    gpu = DeviceInfo(name="Metal", description=platform.processor() or "Apple GPU", type="gpu",
                     memory_total=total, memory_free=total)
    return Probe(True, f"Apple Silicon GPU (Metal); CPU variant {choice.name}",
                 [modules[0], *extra, choice.path], [gpu])
