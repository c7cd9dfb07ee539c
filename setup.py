"""Package layout (core/ -> corral, plugins/ -> corral_plugins) and the backend build step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
PACKAGE_DIRS = {"corral": "core", "corral_plugins": "plugins"}


def find_packages() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages


def builds_backends() -> bool:
    return os.environ.get("CORRAL_BACKENDS", "auto").strip().lower() not in ("none", "skip", "0")


def prefetch_source() -> None:
    """Start fetching the pinned llama.cpp source in the background, once, when pip first asks this
    file for its build requirements: pip then spends seconds resolving and downloading corral's
    dependencies before it builds, and the source download (pip's own, ~15 s with its unpacking)
    runs beside that instead of after it. The build waits for it on a lock; without a network it
    fails there with pip's message. Output goes to the build cache's prefetch.log."""
    if not builds_backends() or (ROOT / "vendor" / "llama.cpp" / ".corral-source.json").exists():
        return
    cache = Path(os.environ.get("CORRAL_BUILD_CACHE", "~/.cache/corral/build")).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / "prefetch.log", "ab") as out:
            subprocess.Popen([sys.executable, str(ROOT / "build_backends.py"), "--prefetch-source"], cwd=ROOT,
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    except OSError:
        pass  # the build fetches it itself


class BuildWithBackends(build_py):
    """Runs build_backends.py before collecting files, so the wheel (or the editable tree)
    carries the llama.cpp libraries for this machine. CORRAL_BACKENDS chooses or skips them."""

    def run(self) -> None:
        if builds_backends():
            subprocess.check_call([sys.executable, str(ROOT / "build_backends.py"), "--from-install"],
                                  cwd=ROOT)
        # build/lib outlives a build: a library folder copied there by an earlier build (another
        # variant set, a module built for another Python) must not ride along into this wheel.
        for stale in Path(self.build_lib, "corral_plugins").glob("*/_lib"):
            shutil.rmtree(stale)
        super().run()


class PlatformWheel(Distribution):
    """A wheel that carries native libraries is tagged for its platform, and for CPython's stable
    ABI (the cffi module is abi3): `cp310-abi3-<platform>`, installable on every CPython >= 3.10.
    With CORRAL_BACKENDS=none it carries none and stays a pure-Python wheel."""

    def has_ext_modules(self) -> bool:
        return builds_backends()


prefetch_source()

setup(
    packages=find_packages(),
    package_dir=PACKAGE_DIRS,
    package_data={
        "corral_plugins": ["*/_lib/*", "*/_lib/**/*"],
        "corral": ["py.typed", "**/*.jinja", "**/*.gotmpl", "**/*.json"],
    },
    distclass=PlatformWheel,
    cmdclass={"build_py": BuildWithBackends},
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if not sysconfig.get_config_var("Py_GIL_DISABLED")
    else {},
)
