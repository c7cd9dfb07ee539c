"""A third-party backend, pip-installed into a throwaway virtualenv, is found, listed, selected and
passes the backend contract suite, exactly like the in-tree ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-corral"
version = "0.3.1"
description = "ACME accelerator backend for corral (test fixture)"
dependencies = []

[project.entry-points.corral]
acme = "acme_corral:plugin"

[tool.setuptools]
packages = ["acme_corral"]
"""

PLUGIN = '''\
"""The ACME backend: the fake backend's behaviour under another name and priority."""
from corral.testing.fake import FakeBackend

plugin = FakeBackend(name="acme", priority=5)
'''

CONTRACT = '''\
"""The contract suite against the installed acme plugin, selected through its entry point."""
import pytest

from corral.config import Config
from corral.plugins import load_plugins
from corral.selection import BackendHooks, select_backend
from corral.testing.contract import BackendContract
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401


class TestAcmeContract(BackendContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend_hooks(cls):
        config = Config(load_plugins=("acme",))
        host = load_plugins(config)
        name, _ = select_backend(host, config)
        assert name == "acme"
        return BackendHooks(host, name)

    @pytest.fixture(scope="class")
    @classmethod
    def model_path(cls, tiny_gguf):
        return str(tiny_gguf)
'''

DISCOVER = '''\
import json
from corral.config import Config
from corral.plugins import load_plugins
from corral.selection import select_backend

config = Config.from_env()
host = load_plugins(config)
name, candidates = select_backend(host, config, "acme")  # what --backend acme does
print(json.dumps({"registered": host.pm.get_plugin("acme") is not None,
                  "dist": host.distribution("acme"), "selected": name,
                  "names": [c.name for c in candidates]}))
'''


@pytest.fixture(scope="module")
def acme_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv that sees the project's packages, with the acme plugin pip-installed into it."""
    root = tmp_path_factory.mktemp("third-party")
    src = root / "acme-corral"
    (src / "acme_corral").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "acme_corral" / "__init__.py").write_text(PLUGIN)
    venv = root / "venv"
    # The project's python may itself be a venv, whose packages --system-site-packages would not
    # reach, so the new venv imports the project's site-packages through a .pth file instead.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_corral_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--disable-pip-version-check", str(src)],
                   check=True, timeout=180, env=_env(venv))
    return venv


def _env(venv: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               CORRAL_HOME=str(venv / "home"), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _run(venv: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), *args], capture_output=True, text=True,
                          timeout=120, env=_env(venv, **env), cwd=venv.parent)


def test_not_installed_in_the_project_env() -> None:
    from importlib.metadata import entry_points

    assert "acme" not in {ep.name for ep in entry_points(group="corral")}


def test_discovered_and_selectable_by_name(acme_venv: Path) -> None:
    proc = _run(acme_venv, ["-c", DISCOVER])
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["registered"] and found["selected"] == "acme"
    assert found["dist"] == ["acme-corral", "0.3.1"]
    assert "acme" in found["names"]


def test_listed_by_corral_backends_and_selected_by_env(acme_venv: Path) -> None:
    proc = _run(acme_venv, ["-m", "corral.cli", "backends", "--json"], CORRAL_BACKEND="acme")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    acme = next(b for b in data["backends"] if b["name"] == "acme")
    assert acme["usable"] and acme["priority"] == 5 and acme["plugin"] == "acme-corral"
    assert data["selected"] == "acme"


def test_disable_plugins_hides_it(acme_venv: Path) -> None:
    proc = _run(acme_venv, ["-m", "corral.cli", "backends", "--json"], CORRAL_DISABLE_PLUGINS="acme")
    assert proc.returncode == 0, proc.stderr
    assert "acme" not in {b["name"] for b in json.loads(proc.stdout)["backends"]}


def test_unknown_backend_is_refused_with_the_candidates(acme_venv: Path) -> None:
    code = textwrap.dedent('''
        from corral.config import Config
        from corral.errors import BackendUnavailableError
        from corral.plugins import load_plugins
        from corral.selection import select_backend
        try:
            select_backend(load_plugins(Config()), Config(), "acmee")
        except BackendUnavailableError as exc:
            print(exc)
    ''')
    proc = _run(acme_venv, ["-c", code])
    assert "'acmee' is not installed" in proc.stdout and "acme " in proc.stdout, proc.stderr


def test_passes_the_contract_suite(acme_venv: Path) -> None:
    tests = acme_venv.parent / "acme_tests"
    tests.mkdir(exist_ok=True)
    (tests / "test_acme_contract.py").write_text(CONTRACT)
    # Third-party pytest plugins are not needed by the suite and cost seconds of start-up.
    proc = _run(acme_venv, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests),
                            str(tests)], PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
