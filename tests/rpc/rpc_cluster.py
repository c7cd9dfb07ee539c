"""Processes for the RPC tests: ``corral worker`` and ``corral serve`` on loopback ports, with their logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from corral.testing.live import free_port
from corral_plugins.rpc.probe import probe_worker

CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"


def cpu_built() -> bool:
    return any(CPU_LIB.glob("_llama_cpu*")) and any(CPU_LIB.glob("libggml-rpc*"))


def clean_env(home: Path, **settings: str) -> dict[str, str]:
    """This environment without the developer's CORRAL_* settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_HOME": str(home), **settings})
    return env


class Proc:
    """A corral CLI command in its own process group, its stdout and stderr in one log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "corral.cli", *self.args], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group: a server's runners go with it
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def fail(self, what: str) -> None:
        raise AssertionError(f"{what}; log {self.log}:\n{self.text()[-3000:]}")


class Worker(Proc):
    """``corral worker`` on a loopback port (1 thread: the suite runs on 2 cores)."""

    def __init__(self, root: Path, name: str, *extra: str, port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = port or free_port()
        self.host = host
        self.extra = extra
        home = root / name
        home.mkdir(parents=True, exist_ok=True)
        super().__init__(["worker", "--host", host, "--port", str(self.port), "--threads", "1", *extra],
                         clean_env(home), root / f"{name}.log")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> Worker:
        """Until the worker says it listens (and, without a gate, answers the RPC protocol)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                self.fail(f"worker {self.endpoint} exited with {self.proc.returncode if self.proc else '?'}")
            if "corral worker: listening on" in self.text() and ("--allow" in self.extra
                                                                 or probe_worker(self.endpoint).ok):
                return self
            time.sleep(0.2)
        self.fail(f"worker {self.endpoint} did not get ready in {timeout:.0f} s")
        raise AssertionError  # unreachable

    def restart(self) -> Worker:
        self.stop()
        return self.start().wait_ready()

    def layers(self) -> set[int]:
        """The model layers the worker last reported its clients hold (it logs changes twice a second)."""
        lines = re.findall(r"clients hold [\d.]+ MiB[^(]*\((no model layers|layers [\d, -]+)\)", self.text())
        found: set[int] = set()
        if lines and lines[-1].startswith("layers "):
            for part in lines[-1][len("layers "):].split(","):
                lo, _, hi = part.strip().partition("-")
                found.update(range(int(lo), int(hi or lo) + 1))
        return found

    def wait_layers(self, want: Callable[[set[int]], bool], timeout: float = 10.0) -> set[int]:
        """The layers once ``want`` accepts them (or whatever they are at the timeout)."""
        deadline = time.monotonic() + timeout
        while not want(held := self.layers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return held


class Server(Proc):
    """``corral serve`` over a model store, on a free loopback port."""

    def __init__(self, root: Path, name: str, models: Path, *args: str, **settings: str) -> None:
        self.port = free_port()
        home = root / name
        home.mkdir(parents=True, exist_ok=True)
        env = clean_env(home, CORRAL_HOST=f"127.0.0.1:{self.port}", CORRAL_MODELS=str(models),
                        CORRAL_KEEP_ALIVE="-1", **settings)
        super().__init__(["serve", *args], env, root / f"{name}.log")
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=300)

    def wait_ready(self, timeout: float = 120.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                self.fail("corral serve exited")
            try:
                if self.http.get("/api/version", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.fail(f"corral serve did not answer in {timeout:.0f} s")
        raise AssertionError  # unreachable

    def options(self, **more: Any) -> dict[str, Any]:
        """Greedy, short, and one CPU thread (two cores run workers, servers and the test)."""
        return {"temperature": 0, "num_predict": 24, "num_thread": 1, **more}

    def generate(self, prompt: str, **fields: Any) -> dict[str, Any]:
        """A greedy, non-streaming /api/generate; raises with the body on an error status."""
        body = {"model": "gemma3:270m", "prompt": prompt, "stream": False,
                "options": self.options(**fields.pop("options", {})), **fields}
        r = self.http.post("/api/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        self.http.close()
        super().stop()
