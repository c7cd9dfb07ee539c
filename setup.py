"""Package layout (core/ -> corral, plugins/ -> corral_plugins) and the backend build step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGE_DIRS = {"corral": "core", "corral_plugins": "plugins"}


def find_packages() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages


class BuildWithBackends(build_py):
    """Runs build_backends.py before collecting files, so the wheel (or the editable tree)
    carries the llama.cpp libraries for this machine. CORRAL_BACKENDS chooses or skips them."""

    def run(self) -> None:
        choice = os.environ.get("CORRAL_BACKENDS", "auto")
        if choice.strip().lower() not in ("none", "skip", "0"):
            subprocess.check_call([sys.executable, str(ROOT / "build_backends.py"), "--from-install"],
                                  cwd=ROOT)
        super().run()


setup(
    packages=find_packages(),
    package_dir=PACKAGE_DIRS,
    package_data={
        "corral_plugins": ["*/_lib/*", "*/_lib/**/*"],
        "corral": ["py.typed", "**/*.jinja", "**/*.gotmpl", "**/*.json"],
    },
    cmdclass={"build_py": BuildWithBackends},
)
