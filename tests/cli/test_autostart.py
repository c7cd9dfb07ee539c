"""With no server running, client commands start one in the background and leave it running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port, server_env, stop_process


def corral(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh CORRAL_HOME and CORRAL_MODELS on a free port with nothing listening; the background
    server the test starts is stopped at the end (its pid is in $CORRAL_HOME/server.pid)."""
    env = {**os.environ, **server_env(tmp_path, free_port())}
    yield env
    pid_file = Path(env["CORRAL_HOME"]) / "server.pid"
    if pid_file.exists():
        stop_process(int(pid_file.read_text().strip()))


def test_client_commands_autostart_a_background_server(fresh: dict[str, str], tiny_gguf: Path,
                                                       tmp_path: Path) -> None:
    # With an API key the background server requires it, and the CLI sends it (same environment).
    fresh = {**fresh, "CORRAL_API_KEY": "s3cret"}
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_gguf}\n")
    created = corral(fresh, "create", "tiny", "-f", str(modelfile))
    assert created.returncode == 0, created.stderr
    assert "started a corral server" in created.stderr
    home = Path(fresh["CORRAL_HOME"])
    assert (home / "logs" / "server.log").read_text().count("listening on") == 1
    pid = int((home / "server.pid").read_text())

    answer = corral(fresh, "run", "tiny", "Say hi")
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
    assert "started a corral server" not in answer.stderr  # the first one is still running
    assert "tiny:latest" in corral(fresh, "ps").stdout
    stopped = corral(fresh, "stop", "tiny")
    assert stopped.returncode == 0, stopped.stderr
    assert "tiny:latest" not in corral(fresh, "ps").stdout
    wrong_key = corral({**fresh, "CORRAL_API_KEY": "guess"}, "list")
    assert wrong_key.returncode == 1 and "CORRAL_API_KEY" in wrong_key.stderr
    os.kill(pid, 0)  # the background server outlived every command


def test_a_server_that_cannot_start_says_why(fresh: dict[str, str]) -> None:
    env = {**fresh, "CORRAL_BACKEND": "no-such-backend"}
    r = corral(env, "list")
    assert r.returncode == 1
    assert "could not start" in r.stderr and "no-such-backend" in r.stderr  # the log tail


def _cpu_backend_usable() -> bool:
    from corral.config import Config
    from corral.plugins import load_plugins
    from corral.selection import probe_backends

    config = Config.from_env({})
    return any(b.name == "cpu" and b.usable for b in probe_backends(load_plugins(config), config))


@pytest.mark.gemma
@pytest.mark.slow
def test_first_run_of_the_default_model_on_a_fresh_machine(tmp_path: Path) -> None:
    if not _cpu_backend_usable():
        pytest.skip("the CPU backend is not built here (plugins/cpu/_lib)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(CORRAL_HOST=f"127.0.0.1:{free_port()}", CORRAL_MODELS=str(tmp_path / "models"),
               CORRAL_HOME=str(tmp_path / "home"))
    pid_file = tmp_path / "home" / "server.pid"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "run", "gemma3:270m", "Say hi"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        answer = b""
        deadline = time.monotonic() + 600  # a ceiling: server start, CPU variant check, load, 3 words
        # Gemma 3 270M is a base model: it may ramble on long after "hi". A few words streamed
        # are the answer this test asks for; then the run gets a little time to end by itself.
        while time.monotonic() < deadline and len(answer.split()) < 3 and proc.poll() is None:
            answer += proc.stdout.read() or b""
            time.sleep(0.2)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: stops this answer, as a user would
            proc.wait(timeout=120)
        answer += proc.stdout.read() or b""
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.returncode in (0, 130), err
        assert answer.split(), err
        ps = corral(env, "ps")
        assert "gemma3:270m" in ps.stdout, ps.stdout
        stop = corral(env, "stop", "gemma3:270m")
        assert stop.returncode == 0, stop.stderr
        assert "gemma3:270m" not in corral(env, "ps").stdout
    finally:
        if pid_file.exists():
            stop_process(int(pid_file.read_text().strip()))
