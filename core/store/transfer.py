"""The registry HTTP client shared by pull and push: URLs, bearer auth, redirects, bounded bodies."""

from __future__ import annotations

import asyncio
import errno
import functools
import secrets
import socket
import ssl
import time
import urllib.parse
from typing import Any

import httpx
import msgspec

from corral import __version__
from corral.errors import InvalidRequestError, ModelNotFoundError, RegistryError, RegistryUnreachableError
from corral.names import DEFAULT_HOST, ModelName
from corral.store.manifest import MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES

MAX_SMALL_BODY = 64 * 1024  # error bodies and tokens (CVE-2024-12886: never read them unbounded)


class TransferSettings(msgspec.Struct, kw_only=True):
    """Pull/push tuning. Defaults follow Ollama (16 parts of 100 MB–1 GB, 6 retries, 30 s stall)."""

    parts: int = 16
    min_part: int = 100 * 1000 * 1000
    max_part: int = 1000 * 1000 * 1000
    parallel: int = 16
    retries: int = 6
    backoff: float = 1.0  # first retry delay in seconds; doubles up to backoff_max
    backoff_max: float = 30.0
    stall_timeout: float = 30.0  # no bytes for this long: drop the connection and retry
    connect_timeout: float = 30.0
    progress_interval: float = 0.06
    save_interval: float = 0.5  # how often resume state is saved while a part downloads
    disk_margin: int = 64 * 1024 * 1024
    max_redirects: int = 5
    upload_chunk: int = 1 << 20
    mirror: str | None = None  # CORRAL_REGISTRY_MIRROR: base URL used for registry.ollama.ai names


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~150 ms; every pull and every shared download reuses one.
    return ssl.create_default_context()


def parse_challenge(header: str) -> dict[str, str]:
    """``Bearer realm="…",service="…",scope="…"`` → {realm, service, scope}."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise RegistryError(f"registry asked for unsupported authentication {scheme[:20]!r}")
    out: dict[str, str] = {}
    for part in _split_params(rest):
        key, _, value = part.partition("=")
        out[key.strip().lower()] = value.strip().strip('"')
    return out


def _split_params(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return [p for p in (p.strip() for p in parts) if p]


class RegistryClient:
    """One registry repository (``namespace/model``) over the Docker registry v2 protocol."""

    def __init__(self, name: ModelName, *, insecure: bool, settings: TransferSettings,
                 token: str | None = None) -> None:
        self.name = name
        self.insecure = insecure
        self.settings = settings
        if settings.mirror and name.host.lower() == DEFAULT_HOST:
            # The mirror stands in for the default registry; plain http there is the user's own choice.
            self.base = settings.mirror
            self.http_ok = insecure or settings.mirror.startswith("http://")
        else:
            if name.scheme == "http" and not insecure:
                raise InvalidRequestError(
                    "insecure protocol http: pass insecure=true to pull or push over plain http")
            self.base = f"{'http' if insecure else 'https'}://{name.host}"
            self.http_ok = insecure
        self.netloc = urllib.parse.urlsplit(self.base).netloc.lower()
        self.token = token
        timeout = httpx.Timeout(connect=settings.connect_timeout, read=settings.stall_timeout,
                                write=settings.stall_timeout, pool=settings.connect_timeout)
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                      verify=_ssl_context(),
                                      headers={"User-Agent": f"corral/{__version__}"})

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def url(self, kind: str, ref: str) -> str:
        return f"{self.base}/v2/{self.name.repository}/{kind}/{ref}"

    def _headers(self, url: str, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        # Credentials go only to the registry host itself, never to a CDN a redirect points at.
        if self.token and urllib.parse.urlsplit(url).netloc.lower() == self.netloc:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def send(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                   content: Any = None, auth_retry: bool = True) -> httpx.Response:
        """Send with manual redirects and one bearer-auth round; the response is streamed."""
        for _ in range(self.settings.max_redirects + 1):
            req = self.http.build_request(method, url, headers=self._headers(url, headers), content=content)
            resp = await self.http.send(req, stream=True)
            if resp.status_code == 401 and auth_retry and "www-authenticate" in resp.headers:
                challenge = resp.headers["www-authenticate"]
                await resp.aclose()
                await self._authenticate(challenge)
                auth_retry = False
                continue
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                url = urllib.parse.urljoin(url, resp.headers["location"])
                await resp.aclose()
                if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                    raise RegistryError("registry redirected to a non-http URL")
                if urllib.parse.urlsplit(url).scheme == "http" and not self.http_ok:
                    raise RegistryError("registry redirected to plain http; refusing without insecure")
                if resp.status_code == 303:
                    method, content = "GET", None
                continue
            return resp
        raise RegistryError(f"registry redirected more than {self.settings.max_redirects} times")

    async def _authenticate(self, challenge: str) -> None:
        params = parse_challenge(challenge)
        realm = params.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        # CVE-2025-51471: a realm on another host would receive our credentials; refuse it.
        if parts.netloc.lower() != self.netloc or parts.scheme not in ("http", "https"):
            raise RegistryError(f"registry {self.name.host} asked to authenticate at another host "
                                f"({parts.netloc[:100] or 'none'}); refusing")
        if parts.scheme == "http" and not self.http_ok:
            raise RegistryError("registry auth realm uses plain http; refusing without insecure")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.update(ts=str(int(time.time())), nonce=secrets.token_urlsafe(16))
        sep = "&" if parts.query else "?"
        url = realm + sep + urllib.parse.urlencode(query)
        resp = await self.http.send(self.http.build_request("GET", url), stream=True)
        try:
            body = await read_bounded(resp, MAX_SMALL_BODY, "auth token")
            if resp.status_code != 200:
                raise RegistryError(f"registry refused authentication: {resp.status_code}")
        finally:
            await resp.aclose()
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise RegistryError("registry sent an invalid auth token response") from None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError("registry sent no auth token")
        self.token = token

    async def get_manifest(self) -> bytes:
        """The manifest bytes; 5xx and dropped connections are retried with backoff.

        A registry that cannot be connected to at all on the first try (no route, no name resolution,
        refused) is reported at once: retrying a missing route only makes the user wait.
        """
        url = self.url("manifests", self.name.tag)
        delay = self.settings.backoff
        reached = False
        for attempt in range(self.settings.retries + 1):
            try:
                resp = await self.send("GET", url, headers={"Accept": MANIFEST_MEDIA_TYPE})
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                why = connect_failure(exc, self.settings)
                why = f"pull model manifest: cannot reach {self.netloc}: {why}"
                if not reached:
                    raise RegistryUnreachableError(why) from None
                if attempt >= self.settings.retries:
                    raise RegistryError(why) from None
            except httpx.TransportError as exc:
                reached = True  # the connection opened and then failed: transient
                if attempt >= self.settings.retries:
                    raise RegistryError(
                        f"pull model manifest: cannot reach {self.netloc}: {exc}") from None
            else:
                reached = True
                try:
                    if resp.status_code < 500 and resp.status_code != 429:
                        if resp.status_code == 404:
                            raise ModelNotFoundError(f'pull model manifest: model "{self.name.display}" '
                                                     "does not exist in the registry")
                        await raise_for_status(resp, "pull model manifest")
                        return await read_bounded(resp, MAX_MANIFEST_BYTES, "manifest")
                    if attempt >= self.settings.retries:
                        await raise_for_status(resp, "pull model manifest")
                finally:
                    await resp.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.backoff_max)
        raise RegistryError("pull model manifest: retries exhausted")


def connect_failure(exc: httpx.TransportError, settings: TransferSettings) -> str:
    """Why a connection could not be opened, in a few words (the OS error under httpx's wrapping)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no answer within {settings.connect_timeout:.0f} s"
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, socket.gaierror):
            return "cannot resolve the host name (no network, or no DNS)"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "no route to the host (no network?)"
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def read_bounded(resp: httpx.Response, limit: int, what: str) -> bytes:
    """The (decoded) body, refusing more than ``limit`` bytes: no gzip bomb reaches memory."""
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit and "content-encoding" not in resp.headers:
        raise RegistryError(f"registry {what} is larger than {limit} bytes")
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) > limit:
            raise RegistryError(f"registry {what} is larger than {limit} bytes")
    return bytes(buf)


async def raise_for_status(resp: httpx.Response, what: str) -> None:
    if resp.status_code < 400:
        return
    try:
        body = await read_bounded(resp, MAX_SMALL_BODY, "error")
    except RegistryError:
        body = b""
    text = body.decode("utf-8", errors="replace").strip()[:300]
    raise RegistryError(f"{what}: registry answered {resp.status_code}" + (f": {text}" if text else ""))
