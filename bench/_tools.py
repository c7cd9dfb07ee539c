"""llama.cpp's own tools from build_backends.py --tools, staged to run on corral's CPU variant."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB_DIR = ROOT / "plugins" / "cpu" / "_lib"


def tools_dir() -> Path | None:
    """Where build_backends.py --tools put llama-bench and llama-server (None if it cannot say)."""
    try:
        out = subprocess.run([sys.executable, str(ROOT / "build_backends.py"), "--print-tools-dir"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def find_tool(name: str, explicit: str | Path | None = None) -> Path:
    """The tool's path, or exit with the one command that builds it."""
    path = Path(explicit) if explicit else None
    if path is None:
        d = tools_dir()
        path = d / name if d else None
    if path is None or not path.is_file():
        raise SystemExit(f"{name} not found: run `python build_backends.py --tools` (same pin, same "
                         f"flags as corral's cpu backend) or pass its path")
    return path


def corral_cpu_variant(lib_dir: Path = LIB_DIR) -> Path:
    """The CPU variant corral itself runs on here (verified, cached by the plugin)."""
    from corral_plugins._llama.cpuvariant import choose_variant

    return Path(choose_variant(lib_dir).path)


def stage_tool(tool: Path, tmp: Path, lib_dir: Path = LIB_DIR, variant: Path | None = None) -> Path:
    """Copy ``tool`` next to corral's libraries and ONLY corral's CPU variant; return the copy.

    A GGML_BACKEND_DL build loads the best-scoring CPU variant found next to the executable: on a CPU
    that advertises instructions its hypervisor forbids that would crash, and in any case the tool must
    run the very kernels corral runs for a comparison to mean anything.
    """
    variant = variant or corral_cpu_variant(lib_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    for lib in lib_dir.iterdir():
        if lib.name.startswith(("libllama", "libggml")) and not lib.name.startswith("libggml-cpu"):
            shutil.copy2(lib, tmp / lib.name, follow_symlinks=True)
    shutil.copy2(variant, tmp / variant.name)
    for lib in tool.parent.glob("lib*.so*"):  # libllama-common, libmtmd, ... from the tools' build
        if not (tmp / lib.name).exists() and not lib.name.startswith("libggml-cpu"):
            shutil.copy2(lib, tmp / lib.name, follow_symlinks=True)
    exe = tmp / tool.name
    shutil.copy2(tool, exe)
    return exe
