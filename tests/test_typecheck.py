"""`mypy --strict` passes on the core (configured in pyproject.toml's [tool.mypy]); CI runs it here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_passes_on_core() -> None:
    # core/ is the import package `corral`: mypy reads it through a link of that name, so every
    # `corral.*` import resolves to the source being checked. The cache keeps reruns to seconds.
    cache = ROOT / ".mypy_cache"
    tree = cache / "tree"
    tree.mkdir(parents=True, exist_ok=True)
    link = tree / "corral"
    if not link.is_symlink() or link.resolve() != (ROOT / "core").resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(ROOT / "core", target_is_directory=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(cache), "-p", "corral"],
        cwd=tree, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout.replace("corral/", "core/") + proc.stderr
