"""An in-process Docker-v2/Ollama registry for tests: Range support, uploads, auth, injectable faults."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_ROUTE = re.compile(r"^/v2/(?P<repo>[^/]+/[^/]+)/(?P<kind>manifests|blobs)/(?P<ref>.+)$")
_UPLOAD = re.compile(r"^/v2/(?P<repo>[^/]+/[^/]+)/blobs/uploads/(?P<id>[0-9a-f]*)$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass
class Faults:
    """What the registry does wrong. Counters count down as the fault fires."""

    drop_after: dict[str, int] = field(default_factory=dict)  # digest -> close after N body bytes
    drop_times: int = 1  # how many blob responses get dropped
    wrong_bytes: set[str] = field(default_factory=set)  # digests served with one byte flipped
    server_errors: dict[str, int] = field(default_factory=dict)  # digest or "manifest" -> 503 count
    bytes_per_second: float = 0.0  # throttle every blob body (0 = unlimited)
    stall: dict[str, float] = field(default_factory=dict)  # digest -> sleep once, mid-body
    ignore_range: bool = False  # answer 200 with the whole body
    manifests: dict[str, bytes] = field(default_factory=dict)  # "ns/model:tag" -> raw bytes served
    auth_realm: str | None = None  # when set, 401 + Bearer challenge unless a token is sent
    chunk_size: int = 16 * 1024  # body write size; small so that mid-part faults land mid-part
    redirect_blobs: str | None = None  # base URL (a "CDN") that blob GETs are redirected to (307)
    gzip_manifests: bool = False  # send manifests gzip-compressed (Content-Encoding: gzip)
    # When set: every blob body stops after its first chunk until the event is set (``holding`` is set
    # once one does; ``hung_up`` once its client goes away), so a test can interrupt a transfer that
    # certainly has not finished.
    hold: threading.Event | None = None


@dataclass
class Access:
    """One request in the access log."""

    method: str
    path: str
    status: int
    range: tuple[int, int] | None = None  # inclusive byte range requested
    sent: int = 0  # body bytes written
    complete: bool = False  # every body byte of the response was written
    authorization: str | None = None


class _QuietServer(ThreadingHTTPServer):
    """A threaded server for which a client hanging up is routine, not an error to print.

    The default ``handle_error`` prints a traceback to ``sys.stderr``; a test that captures stderr
    (the CLI runner does) would then read another test's client closing its pooled connection.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class TestRegistry:
    """Serve a registry on 127.0.0.1 from a directory; use as a context manager.

    Blobs live in files (memory stays flat for large blobs); manifests in memory. ``url`` and
    ``host`` (``127.0.0.1:<port>``) name it; model names look like ``127.0.0.1:PORT/library/x:tag``.
    """

    __test__ = False  # not a pytest class

    TOKEN = "corral-test-token"

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="corral-registry-"))
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "uploads").mkdir(parents=True, exist_ok=True)
        self.manifests: dict[str, bytes] = {}
        self.faults = Faults()
        self.holding = threading.Event()  # a blob body is waiting for ``faults.hold``
        self.hung_up = threading.Event()  # the client of a held body closed its connection
        self.log: list[Access] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> TestRegistry:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TestRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- content ---------------------------------------------------------------------------------
    def blob_file(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"bad digest {digest!r}")
        return self.root / "blobs" / digest.replace(":", "-")

    def add_blob(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_file(digest).write_bytes(data)
        return digest, len(data)

    def add_blob_file(self, path: Path) -> tuple[str, int]:
        """Register a file without reading it into memory (hash streamed, then hard-link or copy)."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        dest = self.blob_file(digest)
        if not dest.exists():
            shutil.copyfile(path, dest)
        return digest, dest.stat().st_size

    def add_model(self, repo_tag: str, layers: list[tuple[str, bytes]], config: bytes | None = None) -> bytes:
        """Publish ``ns/model:tag`` with (media type, bytes) layers; returns the manifest bytes."""
        cfg = config if config is not None else json.dumps({"model_format": "gguf"}).encode()
        cdigest, csize = self.add_blob(cfg)
        entries = []
        for media, data in layers:
            d, n = self.add_blob(data)
            entries.append({"mediaType": media, "digest": d, "size": n})
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cdigest,
                       "size": csize},
            "layers": entries,
        }).encode()
        self.manifests[repo_tag] = manifest
        return manifest

    def requests(self, method: str | None = None, digest: str | None = None) -> list[Access]:
        with self._lock:
            return [a for a in self.log if (method is None or a.method == method)
                    and (digest is None or a.path.endswith(digest))]

    def _record(self, access: Access) -> None:
        with self._lock:
            self.log.append(access)


def _handler(reg: TestRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        # ---- plumbing ----------------------------------------------------------------------------
        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            # recorded before anything goes out: a client that has read the answer finds it in the log
            # (recorded after, a test could look before the server thread got there, under load); the
            # headers and body then go out back to back, as a client may hang up once it has them
            reg._record(Access(self.command, self.path, status, sent=len(body), complete=True,
                               authorization=self.headers.get("Authorization")))
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _authorized(self) -> bool:
            if reg.faults.auth_realm is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {reg.TOKEN}":
                return True
            challenge = f'Bearer realm="{reg.faults.auth_realm}",service="test",scope="repository:x:pull"'
            self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
            return False

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _fault_5xx(self, key: str) -> bool:
            with reg._lock:
                left = reg.faults.server_errors.get(key, 0)
                if left:
                    reg.faults.server_errors[key] = left - 1
            if left:
                self._reply(503, b"try again later")
                return True
            return False

        # ---- verbs -------------------------------------------------------------------------------
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/token"):
                token = json.dumps({"token": reg.TOKEN}).encode()
                self._reply(200, token, {"Content-Type": "application/json"})
                return
            if not self._authorized():
                return
            m = _ROUTE.match(self.path)
            if not m:
                self._reply(404, b"not found")
                return
            if m["kind"] == "manifests":
                self._manifest(m["repo"], m["ref"])
            else:
                self._blob(m["ref"])

        do_HEAD = do_GET  # noqa: N815

        def _manifest(self, repo: str, tag: str) -> None:
            if self._fault_5xx("manifest"):
                return
            key = f"{repo}:{tag}"
            data = reg.faults.manifests.get(key) or reg.manifests.get(key)
            if data is None:
                self._reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                return
            headers = {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}
            if reg.faults.gzip_manifests:
                data = gzip.compress(data)
                headers["Content-Encoding"] = "gzip"
            self._reply(200, data, headers)

        def _blob(self, digest: str) -> None:
            try:
                path = reg.blob_file(digest)
            except ValueError:
                self._reply(400, b"bad digest")
                return
            if not path.is_file():
                self._reply(404, b"blob unknown")
                return
            if self._fault_5xx(digest):
                return
            if reg.faults.redirect_blobs and self.command == "GET":
                self._reply(307, b"", {"Location": reg.faults.redirect_blobs + self.path})
                return
            size = path.stat().st_size
            if self.command == "HEAD":
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                reg._record(Access("HEAD", self.path, 200, complete=True))
                return
            start, end = 0, size - 1
            status = 200
            rng = self.headers.get("Range")
            if rng and not reg.faults.ignore_range:
                mm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not mm or int(mm[1]) >= size:
                    self._reply(416, b"bad range", {"Content-Range": f"bytes */{size}"})
                    return
                start = int(mm[1])
                end = min(int(mm[2]) if mm[2] else size - 1, size - 1)
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            access = Access("GET", self.path, status, range=(start, end) if status == 206 else None,
                            authorization=self.headers.get("Authorization"))
            reg._record(access)
            self._send_file(path, digest, start, end, access)

        def _send_file(self, path: Path, digest: str, start: int, end: int, access: Access) -> None:
            f = reg.faults
            with reg._lock:
                drop = f.drop_after.get(digest) if f.drop_times > 0 else None
                if drop is not None:
                    f.drop_times -= 1
                stall = f.stall.pop(digest, 0.0)
            t0, pos = time.monotonic(), start
            with open(path, "rb") as fh:
                fh.seek(start)
                while pos <= end:
                    chunk = fh.read(min(f.chunk_size, end - pos + 1))
                    if digest in f.wrong_bytes and pos == start and chunk:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    if drop is not None and access.sent + len(chunk) > drop:
                        chunk = chunk[: max(0, drop - access.sent)]
                        self._write(chunk, access)
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if stall and access.sent > (end - start) // 2:
                        time.sleep(stall)
                        stall = 0.0
                    if not self._write(chunk, access):
                        return
                    pos += len(chunk)
                    hold = f.hold
                    if hold is not None and pos <= end:
                        self.wfile.flush()
                        reg.holding.set()
                        while not hold.wait(0.05):
                            if self._peer_closed():
                                reg.hung_up.set()
                                self.close_connection = True
                                return
                    if f.bytes_per_second:
                        ahead = access.sent / f.bytes_per_second - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
            access.complete = True

        def _peer_closed(self) -> bool:
            """The client hung up (EOF or reset on the socket) while its response is held."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _write(self, chunk: bytes, access: Access) -> bool:
            try:
                self.wfile.write(chunk)
            except OSError:
                self.close_connection = True
                return False
            access.sent += len(chunk)
            return True

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            m = re.match(r"^/v2/([^/]+/[^/]+)/blobs/uploads/$", self.path.split("?")[0])
            if not m:
                self._reply(404, b"not found")
                return
            upload = uuid.uuid4().hex
            (reg.root / "uploads" / upload).write_bytes(b"")
            self._reply(202, b"", {"Location": f"/v2/{m[1]}/blobs/uploads/{upload}"})

        def do_PATCH(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            m = _UPLOAD.match(self.path.split("?")[0])
            target = reg.root / "uploads" / (m["id"] if m else "")
            if not m or not m["id"] or not target.is_file():
                self._reply(404, b"upload unknown")
                return
            n = int(self.headers.get("Content-Length") or 0)
            with open(target, "ab") as out:
                while n > 0:
                    chunk = self.rfile.read(min(n, 1 << 20))
                    if not chunk:
                        break
                    out.write(chunk)
                    n -= len(chunk)
            size = target.stat().st_size
            self._reply(202, b"", {"Location": self.path.split("?")[0], "Range": f"0-{max(0, size - 1)}"})

        def do_PUT(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            path, _, query = self.path.partition("?")
            m = _UPLOAD.match(path)
            if m and m["id"]:
                digest = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("digest", "")
                digest = digest.replace("%3A", ":").replace("%3a", ":")
                target = reg.root / "uploads" / m["id"]
                extra = self._body()
                if not target.is_file() or not _DIGEST.match(digest):
                    self._reply(400, b"bad upload")
                    return
                with open(target, "ab") as out:
                    out.write(extra)
                got, _ = _hash_file(target)
                if got != digest:
                    target.unlink()
                    self._reply(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                    return
                target.replace(reg.blob_file(digest))
                self._reply(201, b"", {"Docker-Content-Digest": digest})
                return
            rm = _ROUTE.match(path)
            if rm and rm["kind"] == "manifests":
                data = self._body()
                try:
                    doc = json.loads(data)
                    digests = [doc["config"]["digest"]] + [layer["digest"] for layer in doc["layers"]]
                except (ValueError, KeyError, TypeError):
                    self._reply(400, b"bad manifest")
                    return
                if not all(_DIGEST.match(d) and reg.blob_file(d).is_file() for d in digests):
                    self._reply(400, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                    return
                reg.manifests[f"{rm['repo']}:{rm['ref']}"] = data
                self._reply(201)
                return
            self._reply(404, b"not found")

    return Handler


def _hash_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def serve_forever(root: Path) -> Iterator[TestRegistry]:
    """Generator form for fixtures: ``yield from serve_forever(tmp)``."""
    with TestRegistry(root) as reg:
        yield reg
