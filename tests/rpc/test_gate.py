"""`corral worker --allow`: a peer outside the list is refused before llama.cpp's RPC server sees a byte."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rpc_cluster import Worker, clean_env, cpu_built

from corral.testing.live import free_port
from corral_plugins.rpc.probe import CMD_DEVICE_COUNT, CMD_HELLO, CONN_CAPS

pytestmark = pytest.mark.skipif(not cpu_built(), reason="the cpu backend with its RPC module is not built")

# llama.cpp's server prints this for every connection it takes (rpc-server's own log line).
ACCEPTED = "Accepted client connection"


def hello_from(source: str, endpoint: str) -> bytes:
    """Connect from ``source``, say HELLO, and return what comes back (b"" when the gate closed on us)."""
    host, _, port = endpoint.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect((host, int(port)))
        try:
            s.sendall(struct.pack("<BQ", CMD_HELLO, CONN_CAPS) + bytes(CONN_CAPS))
            reply = read(s, 8 + 4 + CONN_CAPS)
            if reply:  # allowed: the real server answers, and keeps answering
                s.sendall(struct.pack("<BQ", CMD_DEVICE_COUNT, 0))
                reply += read(s, 8 + 4)
            return reply
        except ConnectionError:  # reset or broken pipe: the gate closed before or while we spoke
            return b""


def read(s: socket.socket, n: int) -> bytes:
    """``n`` bytes, or what came before the peer closed (the relay may split a message)."""
    out = b""
    while len(out) < n and (chunk := s.recv(n - len(out))):
        out += chunk
    return out


def local_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_loopback_worker_refuses_peers_outside_allow(tmp_path: Path) -> None:
    # 127.0.0.0/8 is all loopback on Linux: the worker listens on 127.0.0.2 and allows only 127.0.0.3,
    # so the same machine can knock from an address outside the list (127.0.0.1) and from one inside.
    worker = Worker(tmp_path, "gated", "--allow", "127.0.0.3/32", host="127.0.0.2")
    try:
        worker.start().wait_ready()
        before = worker.text().count(ACCEPTED)  # the worker's own readiness check
        assert hello_from("127.0.0.1", worker.endpoint) == b""
        assert "refused a connection from 127.0.0.1" in worker.text()
        assert worker.text().count(ACCEPTED) == before  # llama.cpp never saw it
        reply = hello_from("127.0.0.3", worker.endpoint)
        # | size=28 | 7.0.0, pad, 24 caps | then | size=4 | one device |
        assert reply[:8] == struct.pack("<Q", 4 + CONN_CAPS) and reply[8:11] == bytes([7, 0, 0]), reply
        assert reply[-12:] == struct.pack("<QI", 4, 1), reply
    finally:
        worker.stop()
    assert worker.text().count(ACCEPTED) == before + 1


def test_non_loopback_worker_needs_allow_and_enforces_it(tmp_path: Path) -> None:
    address = local_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_port()
    cmd = [sys.executable, "-m", "corral.cli", "worker", "--host", address, "--port", str(port)]
    bare = subprocess.run(cmd, env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "--allow" in bare.stderr, bare.stderr
    assert "no authentication and no encryption" in bare.stderr
    # Allowed: a documentation network this machine is not in. Its own address knocks and is refused.
    worker = Worker(tmp_path, "exposed", "--allow", "198.51.100.0/24", host=address, port=port)
    try:
        worker.start().wait_ready()
        before = worker.text().count(ACCEPTED)
        assert hello_from(address, worker.endpoint) == b""
        assert f"refused a connection from {address}" in worker.text()
        assert worker.text().count(ACCEPTED) == before
        assert "no authentication and no encryption" in worker.text()
    finally:
        worker.stop()
