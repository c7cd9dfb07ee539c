"""A live `corral serve` (fake backend, temp store) shared by the CLI tests, and helpers to drive it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli.client import Client
from corral.cli.main import app
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401  (fixtures)
from corral.testing.live import free_port

NO_REGISTRY = "http://127.0.0.1:9"

# Prompts containing these words get scripted fake answers (the runner reads this file at start).
FAKE_RULES = [
    # ~500 s of streaming: it cannot end by itself before a test's Ctrl-C, however busy the machine is
    {"match": "go slowly", "reply": "one two three four five six seven eight nine ten " * 1000,
     "delay": 0.05},
    {"match": "fail please", "error": "scripted failure"},
    # a thinking model (test_run_thinks_by_itself...): reasoning only when the prompt opened it
    {"match": "2+2?\nassistant: <think>", "reply": "Let me add.</think>It is 4."},
    {"match": "2+2?\nassistant: ", "reply": "4."},
]


def wait_for(client: Client, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"corral serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if client.ping(timeout=0.5):
            return
        time.sleep(0.1)
    pytest.fail(f"corral serve did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_process(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM a process that is not our child (a background server), then SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@dataclass
class LiveServer:
    env: dict[str, str]
    root: Path
    log: Path

    @property
    def client(self) -> Client:
        return Client(f"http://{self.env['CORRAL_HOST']}")


def server_env(root: Path, port: int) -> dict[str, str]:
    rules = root / "fake-rules.json"
    rules.write_text(json.dumps(FAKE_RULES))
    return {
        "CORRAL_HOST": f"127.0.0.1:{port}",
        "CORRAL_MODELS": str(root / "models"),
        "CORRAL_HOME": str(root / "home"),
        "CORRAL_EXTRA_PLUGINS": "corral.testing.fake",
        "CORRAL_BACKEND": "fake",
        "CORRAL_FAKE_SCRIPT": str(rules),
        "CORRAL_NOHISTORY": "1",
        # Pulls of registry.ollama.ai names go here: a port nothing listens on (a privileged one, so no
        # test's ephemeral port can take it). The tests never depend on the real registry.
        "CORRAL_REGISTRY_MIRROR": NO_REGISTRY,
    }


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`corral serve` in a subprocess, exactly as a user starts it, on a free port and a temp store."""
    root = tmp_path_factory.mktemp("cli-server")
    env = server_env(root, free_port())
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "serve"], env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(env=env, root=root, log=log)
    try:
        wait_for(server.client, proc, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def cli_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    """Point this test's CLI at the live server."""
    for key, value in live_server.env.items():
        monkeypatch.setenv(key, value)
    return live_server


@pytest.fixture(scope="session")
def tiny_model(live_server: LiveServer, tiny_gguf: Path) -> str:  # noqa: F811
    """The tiny GGUF imported as ``tiny`` through `corral create` (hash, blob upload, /api/create)."""
    modelfile = live_server.root / "Modelfile"
    modelfile.write_text(f"FROM {tiny_gguf}\nPARAMETER temperature 0\nSYSTEM You are tiny.\n"
                         "LICENSE \"\"\"Tiny License\nsecond line\"\"\"\n")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in live_server.env.items():
            mp.setenv(key, value)
        result = CliRunner().invoke(app, ["create", "tiny", "-f", str(modelfile)])
    assert result.exit_code == 0, result.output
    return "tiny"
