"""`corral pull` / `push` and `run` on a missing model, against the in-process test registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli.main import app
from corral.testing.registry import TestRegistry

from .conftest import LiveServer

runner = CliRunner()
GGUF_MEDIA = "application/vnd.ollama.image.model"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[TestRegistry]:
    with TestRegistry(tmp_path_factory.mktemp("registry")) as reg:
        reg.add_model("library/regtiny:latest", [(GGUF_MEDIA, tiny_gguf.read_bytes())])
        yield reg


def test_pull_prints_plain_progress_lines_off_a_terminal(cli_env: LiveServer, registry: TestRegistry) -> None:
    name = f"{registry.host}/library/regtiny"
    r = runner.invoke(app, ["pull", name, "--insecure"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert any(line.startswith("pulling ") and "(100%)" in line for line in lines)
    assert "regtiny:latest" in runner.invoke(app, ["list"]).stdout
    assert runner.invoke(app, ["rm", name]).exit_code == 0


def test_pull_of_an_unknown_model_fails_in_one_line(cli_env: LiveServer, registry: TestRegistry) -> None:
    r = runner.invoke(app, ["pull", f"{registry.host}/library/nothing-here", "--insecure"])
    assert r.exit_code == 1
    assert r.stderr.count("Error:") == 1 and "Traceback" not in r.output


def test_run_pulls_a_missing_model_first(cli_env: LiveServer, registry: TestRegistry) -> None:
    name = f"{registry.host}/library/regtiny"
    r = runner.invoke(app, ["run", name, "hello", "--insecure"])
    assert r.exit_code == 0, r.output
    assert "pulling manifest" in r.stderr and "success" in r.stderr
    assert "hello" in r.stdout
    assert runner.invoke(app, ["rm", name]).exit_code == 0


def test_push_to_the_registry(cli_env: LiveServer, registry: TestRegistry, tiny_model: str) -> None:
    target = f"{registry.host}/me/pushed:v1"
    assert runner.invoke(app, ["cp", tiny_model, target]).exit_code == 0
    r = runner.invoke(app, ["push", target, "--insecure"])
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[-1] == "success"
    assert "me/pushed:v1" in registry.manifests
    assert runner.invoke(app, ["rm", target]).exit_code == 0


@pytest.mark.slow
def test_ctrl_c_interrupts_a_pull_that_then_resumes(live_server: LiveServer, tmp_path: Path) -> None:
    with TestRegistry(tmp_path / "slow-registry") as reg:
        blob = os.urandom(3 * 1024 * 1024)
        reg.add_model("library/bigone:latest", [(GGUF_MEDIA, blob)])
        reg.faults.bytes_per_second = 1024 * 1024
        name = f"{reg.host}/library/bigone"
        env = {**os.environ, **live_server.env}
        proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "pull", name, "--insecure"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(a.sent > 256 * 1024 for a in reg.requests("GET")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "pull interrupted" in err and "again to resume" in err
        reg.faults.bytes_per_second = 0
        again = subprocess.run([sys.executable, "-m", "corral.cli", "pull", name, "--insecure"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        ranged = [a for a in reg.requests("GET") if a.range and a.range[0] > 0]
        assert ranged, "the second pull should resume with a Range request"
        subprocess.run([sys.executable, "-m", "corral.cli", "rm", name], env=env, capture_output=True)
