"""Start `corral serve` in the background when no server answers, as the Ollama desktop app does."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import ServerUnavailableError

if TYPE_CHECKING:
    from corral.cli.client import Client
    from corral.config import Config

START_TIMEOUT_S = 60.0  # a cold start imports litestar and probes backends; a slow disk needs time


def log_path(config: Config) -> Path:
    """Where a background server writes its log: ``$CORRAL_HOME/logs/server.log``."""
    return config.home / "logs" / "server.log"


def pid_path(config: Config) -> Path:
    return config.home / "server.pid"


def _is_local(host: str) -> bool:
    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def ensure_server(client: Client, config: Config, *, backend: str | None = None) -> bool:
    """Make sure a server answers at ``config.base_url``; start one in the background if none does.

    Returns True when this call started the server. A remote ``CORRAL_HOST`` is never started here:
    the error then says that nothing answers there.
    """
    if client.ping():
        return False
    if not _is_local(config.host):
        raise ServerUnavailableError(
            f"no corral server answers at {config.base_url} (CORRAL_HOST); "
            "start it there with 'corral serve'")
    log = log_path(config)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "corral.cli", "serve"]
    if backend:
        cmd += ["--backend", backend]
    env = dict(os.environ)
    # The child must bind where this client will look, even when the address came from a flag.
    env["CORRAL_HOST"] = f"{config.scheme}://{config.base_url.split('://', 1)[1]}"
    with log.open("ab") as out:
        out.write(f"\n---- corral serve started by the CLI at {time.strftime('%Y-%m-%d %H:%M:%S')} ----\n"
                  .encode())
        out.flush()
        # A new session detaches the server from this terminal: Ctrl-C here or closing the terminal
        # must not stop it, and it outlives this process.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)
    pid_path(config).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            if client.ping():  # another server won the race for the port: use it
                return False
            raise ServerUnavailableError(
                f"the corral server could not start (exit status {code}); log {log}:\n{_tail(log)}")
        if client.ping(timeout=1.0):
            return True
        time.sleep(0.1)
    raise ServerUnavailableError(
        f"the corral server did not answer at {config.base_url} within {START_TIMEOUT_S:.0f} s; "
        f"it may still be starting (pid {proc.pid}); log {log}:\n{_tail(log)}")
