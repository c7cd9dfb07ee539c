"""The RPC parts that need no worker: endpoints, allow-lists, the gate, the protocol probe, the estimate."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from typer.testing import CliRunner

from corral.cli.main import app
from corral.config import Config, parse_workers
from corral.gguf import read_gguf_info
from corral.rpcgate import AllowList, Gate
from corral.types import LoadOptions
from corral_plugins.rpc.placement import device_need
from corral_plugins.rpc.probe import CONN_CAPS, probe_worker, probe_workers


def test_worker_endpoints_are_checked_and_canonical() -> None:
    assert parse_workers(" 10.0.0.5:50052, Box-2.lan:1 ,") == ("10.0.0.5:50052", "box-2.lan:1")
    for bad in ("10.0.0.5", "10.0.0.5:0", "10.0.0.5:70000", "[::1]:50052", "::1:5", "a:b", "x:1,x:1",
                ",".join(f"h{i}:1" for i in range(17))):
        with pytest.raises(ValueError):
            parse_workers(bad)
    assert Config.from_env({"CORRAL_WORKERS": "127.0.0.1:1"}).to_env()["CORRAL_WORKERS"] == "127.0.0.1:1"
    with pytest.raises(ValueError, match="CORRAL_WORKERS|worker"):
        Config.from_env({"CORRAL_WORKERS": "nope"})


def test_serve_refuses_bad_workers_and_worker_refuses_a_bad_host() -> None:
    r = CliRunner().invoke(app, ["serve", "--workers", "localhost"])
    assert r.exit_code == 2 and "host:port" in r.output
    r = CliRunner().invoke(app, ["worker", "--host", "::1"])
    assert r.exit_code == 2 and "IPv4" in r.output
    r = CliRunner().invoke(app, ["worker", "--allow", "10.0.0.0/33"])
    assert r.exit_code == 2 and "CIDR" in r.output


def test_allow_list() -> None:
    allow = AllowList.parse(["10.0.0.0/24", "192.168.1.7,127.0.0.3"])
    assert allow.allows("10.0.0.200") and allow.allows("192.168.1.7") and allow.allows("127.0.0.3")
    assert allow.allows("::ffff:10.0.0.9")  # an IPv4 peer seen by a dual-stack socket
    assert not allow.allows("10.0.1.1") and not allow.allows("127.0.0.1") and not allow.allows("junk")
    assert not AllowList.parse([]).allows("127.0.0.1")
    with pytest.raises(ValueError, match="10.0.0.0/99"):
        AllowList.parse(["10.0.0.0/99"])


def _listener(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback TCP server that runs ``handle`` on each connection; yields its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


@pytest.fixture
def echo() -> Iterator[tuple[int, list[str]]]:
    """An upstream that echoes, and the peers it saw (what llama.cpp's server would see)."""
    seen: list[str] = []

    def handle(conn: socket.socket) -> None:
        seen.append(conn.getpeername()[0])
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    for port in _listener(handle):
        yield port, seen


def test_gate_relays_allowed_peers_and_drops_others_unread(echo: tuple[int, list[str]]) -> None:
    port, seen = echo
    gate = Gate(("127.0.0.2", 0), ("127.0.0.1", port), AllowList.parse(["127.0.0.3"]))
    threading.Thread(target=gate.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(gate.address, timeout=5, source_address=("127.0.0.1", 0)) as s:
            try:
                s.sendall(b"x" * 100)
                assert s.recv(10) == b""
            except ConnectionError:
                pass
        payload = bytes(range(256)) * 4096  # 1 MiB, both ways
        with socket.create_connection(gate.address, timeout=5, source_address=("127.0.0.3", 0)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                got += s.recv(1 << 20)
            assert bytes(got) == payload
        assert seen == ["127.0.0.1"]  # one relayed connection, from the gate itself; none for the refused
    finally:
        gate.close()


def test_probe_states_never_hang() -> None:
    def closes(conn: socket.socket) -> None:
        conn.close()

    def silent(conn: socket.socket) -> None:  # like a busy llama.cpp server: accepted, never answers
        time.sleep(3)
        conn.close()

    def old(conn: socket.socket) -> None:  # an RPC server of another protocol version
        with conn:
            conn.recv(1 + 8 + CONN_CAPS)
            conn.sendall(struct.pack("<Q", 4 + CONN_CAPS) + bytes([6, 0, 0, 0]) + bytes(CONN_CAPS))
            time.sleep(0.5)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
    for a, b, c in zip(_listener(closes), _listener(silent), _listener(old), strict=True):
        t0 = time.monotonic()
        found = probe_workers([dead, f"127.0.0.1:{a}", f"127.0.0.1:{b}", f"127.0.0.1:{c}"], timeout=0.5)
        assert time.monotonic() - t0 < 2.0  # probed at once, each within its timeout
        assert [w.state for w in found] == ["unreachable", "broken", "busy", "incompatible"], found
        assert "6.0.0" in found[3].detail
        assert found[0].describe().startswith(f"{dead} unreachable")
    assert probe_worker("192.0.2.1:9", timeout=0.3).state == "unreachable"  # TEST-NET: nothing answers


def test_device_need_of_gemma() -> None:
    from corral_plugins._llama.assets import gemma_gguf

    info = read_gguf_info(gemma_gguf(), keep_arrays=False)
    mib = 2**20
    full = device_need(info, LoadOptions(num_ctx=512, num_parallel=1))
    # 18 layers of 3.6 MiB and the tied output (a copy of the 170 MiB embedding); 1 KiB of f16 K and V
    # per token per layer (1 KV head of 256).
    assert full.layers == 18 and 230 * mib < full.weights < 240 * mib
    assert full.kv_cache == 18 * 512 * 1024
    assert device_need(info, LoadOptions(num_gpu=0)).total == 0
    part = device_need(info, LoadOptions(num_gpu=5, num_ctx=512, num_parallel=2, kv_cache_type="q8_0"))
    assert part.layers == 4 and 170 * mib < part.weights < 190 * mib  # four layers and the output
    assert part.kv_cache == 4 * 1024 * 512 * 34 // 32  # 1024 cells, K and V of 256 at 34 bytes per 32
