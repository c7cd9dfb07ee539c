"""Safe defaults in one ASGI middleware: Host check, CORS, cross-site POST refusal, API key, body limit."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Iterable
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from corral.config import Config
from corral.server.errors import ENCODER_ERRORS, error_body

# compat(ollama): gin-contrib/cors defaults in server/routes.go (browser extensions are left out: a
# stray extension should not get the model API without the user saying so in CORRAL_ORIGINS).
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
_APP_SCHEMES = ("app", "file", "tauri", "vscode-webview", "vscode-file")
_ALLOW_HEADERS = ("authorization", "content-type", "user-agent", "accept", "x-requested-with", "openai-beta",
                  "x-api-key", "anthropic-version", "anthropic-beta")
_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
# Content types a browser may POST cross-site without a CORS preflight.
_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
_MUTATING = ("POST", "PUT", "PATCH", "DELETE")
# Routes anyone may call without the API key: health checks.
_PUBLIC = (("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version"))
# Raw uploads that legitimately exceed the JSON body limit.
_UNLIMITED_PREFIXES = ("/api/blobs/",)


def is_loopback_bind(host: str) -> bool:
    """True when the server listens on loopback only (then Host names are checked against rebinding)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(header: str) -> bool:
    """Whether a Host header may reach a loopback-bound server (the DNS-rebinding defence).

    Allowed: ``localhost``, this machine's hostname, and loopback, private or unspecified IP
    literals. Suffixes such as ``.localhost``/``.local``/``.internal`` are refused: any website can
    point such a name at 127.0.0.1 on a victim's network.
    """
    host = header.strip().lower()
    if not host:
        return False
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        host = host[1:end]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if host in ("localhost", socket.gethostname().lower()):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified


class OriginPolicy:
    """Which browser origins may call the API: local pages, desktop app schemes, and CORRAL_ORIGINS."""

    def __init__(self, extra: Iterable[str]) -> None:
        self.extra = tuple(o.strip().rstrip("/") for o in extra if o.strip())
        self.wildcard = "*" in self.extra

    def allowed(self, origin: str) -> bool:
        if not origin or origin == "null":
            return False
        if self.wildcard:
            return True
        parts = urlsplit(origin)
        scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
        if scheme in ("http", "https"):
            host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
            if host in _LOCAL_HOSTS:
                return True
        if scheme in _APP_SCHEMES:
            return True
        return any(fnmatchcase(origin.lower(), pat.lower()) for pat in self.extra)

    def allow_origin_value(self, origin: str) -> str:
        # "*" only when the operator configured it; otherwise echo the one origin (never with credentials).
        return "*" if self.wildcard else origin


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` so Litestar answers 413 with the API's envelope."""

    status_code = 413


class SecurityMiddleware:
    """The safe-defaults gate in front of every route."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.app = app
        self.check_host = is_loopback_bind(config.host)
        self.origins = OriginPolicy(config.origins)
        self.key_digest = hashlib.sha256(config.api_key.encode()).digest() if config.api_key else None
        self.max_body = config.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        origin = headers.get("origin", "")

        if self.check_host and not host_allowed(headers.get("host", "")):
            await _reject(send, path, 403, "forbidden: Host header is not allowed")
            return

        origin_ok = self.origins.allowed(origin)
        cors = self._cors_headers(origin) if origin_ok else []
        if method == "OPTIONS" and "access-control-request-method" in headers:
            if not origin_ok:
                await _reject(send, path, 403, "forbidden: origin is not allowed")
                return
            await _send(send, 204, [*cors, *self._preflight_headers(headers)], b"")
            return

        if method in _MUTATING and origin and not origin_ok:
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype in _SIMPLE_TYPES or ctype == "" or headers.get("sec-fetch-site") == "cross-site":
                await _reject(send, path, 403, "forbidden: cross-site request refused")
                return

        if self.key_digest is not None and (method, path) not in _PUBLIC and method != "OPTIONS":
            if not self._key_ok(headers.get("authorization", ""), headers.get("x-api-key", "")):
                await _reject(send, path, 401, "unauthorized: missing or invalid API key",
                              [(b"www-authenticate", b"Bearer")], cors)
                return

        limit = None if path.startswith(_UNLIMITED_PREFIXES) else self.max_body
        if limit is not None:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                await _reject(send, path, 413, f"request body too large (limit {limit} bytes)", extra=cors)
                return

        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cors:
                    message["headers"] = [*message.get("headers", []), *cors]
            await send(message)

        seen = 0

        async def receive_wrapper() -> ReceiveMessage:
            nonlocal seen
            message = await receive()
            if limit is not None and message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(detail=f"request body too large (limit {limit} bytes)")
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if started:
                raise
            await _reject(send, path, 413, f"request body too large (limit {limit} bytes)", extra=cors)

    def _key_ok(self, authorization: str, x_api_key: str = "") -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            # compat(anthropic): Anthropic's clients send the key as x-api-key instead.
            token = x_api_key
        if not token or self.key_digest is None:
            return False
        # Compare fixed-length digests so the time taken says nothing about the key or its length.
        return hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self.key_digest)

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", self.origins.allow_origin_value(origin).encode("latin-1")),
                (b"vary", b"Origin")]

    def _preflight_headers(self, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        asked = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",")]
        # compat(openai): the JS SDK sends x-stainless-* headers on every request.
        ok = [h for h in asked if h and (h in _ALLOW_HEADERS or h.startswith("x-stainless-"))]
        allow = ", ".join(dict.fromkeys([*_ALLOW_HEADERS, *ok]))
        return [(b"access-control-allow-methods", _ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", allow.encode("latin-1")),
                (b"access-control-max-age", b"43200")]


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status,
                                     "headers": [*headers, (b"content-length", str(len(body)).encode())]}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


async def _reject(send: Send, path: str, status: int, message: str,
                  extra: list[tuple[bytes, bytes]] | None = None,
                  cors: list[tuple[bytes, bytes]] | None = None) -> None:
    envelope = error_body(path, message, status)
    headers = [(b"content-type", b"application/json"), *(extra or []), *(cors or [])]
    await _send(send, status, headers, ENCODER_ERRORS.encode(envelope))
