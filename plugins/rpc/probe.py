"""Ask RPC workers what they offer, over llama.cpp's RPC protocol, with short timeouts and no native code.

llama.cpp's own client aborts the process when a worker cannot be reached, so the checks that must
never crash (``corral backends``, a load's pre-check, explaining a runner's death) speak the few
read-only messages themselves: HELLO, DEVICE_COUNT and GET_DEVICE_MEMORY (ggml-rpc.cpp at the pin).
"""

from __future__ import annotations

import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from corral.types import DeviceInfo

# ggml/include/ggml-rpc.h and ggml/src/ggml-rpc/ggml-rpc.cpp at the pin: protocol 7.0.0.
PROTO_MAJOR, PROTO_MINOR = 7, 0
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15
CONN_CAPS = 24  # rpc_msg_hello_req: 24 bytes of transport capabilities (zero: plain TCP)
MAX_DEVICES = 16
TIMEOUT = 1.0


@dataclass
class WorkerStatus:
    """One worker as a probe found it: ``state`` is ok, unreachable, busy, incompatible or broken."""

    endpoint: str
    state: str
    detail: str = ""
    version: str = ""
    devices: list[DeviceInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def free(self) -> int:
        return sum(d.memory_free for d in self.devices)

    def describe(self) -> str:
        """One phrase for a person: what it offers, or what is wrong with it."""
        if self.ok:
            n = len(self.devices)
            return f"{self.endpoint} ({n} device{'s' if n != 1 else ''}, {_mib(self.free)} free)"
        return f"{self.endpoint} {self.state}: {self.detail}"


class _Closed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed()
        buf += chunk
    return bytes(buf)


def _call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    """| cmd u8 | size u64 | payload | -> | size u64 | reply |, little-endian as on every ggml host."""
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ValueError(f"a reply of {size} bytes where {reply_size} were due")
    return _recv_exact(sock, reply_size)


def probe_worker(endpoint: str, timeout: float = TIMEOUT) -> WorkerStatus:
    """Connect, say HELLO, and read each device's memory; every failure becomes a state, never an error."""
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except TimeoutError:
        return WorkerStatus(endpoint, "unreachable", f"no answer to a connection within {timeout:g} s")
    except OSError as exc:
        return WorkerStatus(endpoint, "unreachable", (exc.strerror or str(exc)).lower())
    with sock:
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS), 4 + CONN_CAPS)
        except TimeoutError:
            # llama.cpp's server takes one client at a time: this connection waits in its queue.
            return WorkerStatus(endpoint, "busy", f"it did not answer within {timeout:g} s (llama.cpp's RPC "
                                "server serves one client at a time: is a model loaded from another "
                                "runner or corral server?)")
        except (_Closed, OSError, ValueError) as exc:
            why = f" ({exc})" if str(exc) else ""
            return WorkerStatus(endpoint, "broken", f"not an RPC worker, or it closed the connection{why}")
        major, minor, patch = hello[0], hello[1], hello[2]
        version = f"{major}.{minor}.{patch}"
        if major != PROTO_MAJOR or minor > PROTO_MINOR:
            return WorkerStatus(endpoint, "incompatible", f"it speaks RPC protocol {version}, this build "
                                f"{PROTO_MAJOR}.{PROTO_MINOR}.x: run the same corral version on both",
                                version=version)
        try:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
            if not 0 < count <= MAX_DEVICES:
                return WorkerStatus(endpoint, "broken", f"it reports {count} devices", version=version)
            devices = []
            for i in range(count):
                reply = _call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16)
                free, total = struct.unpack("<QQ", reply)
                devices.append(DeviceInfo(name=f"RPC[{endpoint}]#{i}", description=f"device {i} of worker "
                                          f"{endpoint}", type="rpc", memory_total=total,
                                          memory_free=min(free, total) if total else free))
        except (_Closed, OSError, ValueError) as exc:
            why = f" ({exc})" if str(exc) else ""
            return WorkerStatus(endpoint, "broken", f"the conversation broke off{why}", version=version)
    return WorkerStatus(endpoint, "ok", version=version, devices=devices)


def probe_workers(endpoints: list[str] | tuple[str, ...], timeout: float = TIMEOUT) -> list[WorkerStatus]:
    """Every worker probed at once (so N slow hosts cost one timeout), in the given order."""
    if not endpoints:
        return []
    with ThreadPoolExecutor(max_workers=len(endpoints), thread_name_prefix="corral-rpc-probe") as pool:
        return list(pool.map(lambda e: probe_worker(e, timeout), endpoints))


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
