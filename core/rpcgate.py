"""The gate of an RPC worker: a peer outside ``--allow`` is refused before llama.cpp's server sees a byte.

llama.cpp's server (``ggml_backend_rpc_start_server``) binds its own socket from a ``host:port`` and
takes every connection: it cannot be handed a listening socket or a filter. So when clients are
restricted, the server listens on a private loopback port and this gate owns the public one: it
accepts, checks the peer's address, and either closes the connection at once or relays its bytes both
ways, unchanged, to the server.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Iterable

log = logging.getLogger("corral.worker")

_CHUNK = 1 << 20
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    """Client networks from ``--allow`` (CIDR blocks or single addresses)."""

    def __init__(self, networks: Iterable[_Network]) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, items: Iterable[str]) -> AllowList:
        """``["10.0.0.0/24", "192.168.1.7"]``; a malformed entry raises ValueError naming it."""
        nets = []
        for item in items:
            for part in item.split(","):
                if not part.strip():
                    continue
                try:
                    nets.append(ipaddress.ip_network(part.strip(), strict=False))
                except ValueError:
                    raise ValueError(f"--allow {part.strip()!r} is not an address or a CIDR block "
                                     "such as 10.0.0.0/24") from None
        return cls(nets)

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks) or "nobody"


def free_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for the server behind the gate)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gate:
    """Listens on ``listen`` and relays allowed peers to ``upstream`` (one thread pair per connection)."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], allow: AllowList) -> None:
        self.upstream = upstream
        self.allow = allow
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(16)
        self._closed = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        """Accept until ``close``; each connection is decided here, on the accepting thread."""
        while not self._closed.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self.allow.allows(peer[0]):
                # Closed before reading anything: the peer learns nothing and llama.cpp sees nothing.
                log.warning("refused a connection from %s: not in --allow (%s)", peer[0], self.allow)
                conn.close()
                continue
            threading.Thread(target=self._relay, args=(conn, peer), name="corral-gate", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _relay(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=10)
        except OSError as exc:
            log.error("cannot reach llama.cpp's RPC server at %s:%d: %s", *self.upstream, exc)
            conn.close()
            return
        up.settimeout(None)
        # Every RPC message is a small request and a wait for its answer: Nagle would add 40 ms to each.
        for s in (conn, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("client %s:%d connected", peer[0], peer[1])
        back = threading.Thread(target=_pump, args=(up, conn), name="corral-gate-back", daemon=True)
        back.start()
        _pump(conn, up)
        back.join()
        conn.close()
        up.close()
        log.info("client %s:%d disconnected", peer[0], peer[1])


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until either side ends, then end the whole relay (the protocol has no
    half-closed state: a client or server that stops sending is gone)."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            dst.sendall(view[:n])
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
