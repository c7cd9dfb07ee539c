"""A small HTTP client for the corral server: JSON calls, NDJSON streams, error envelopes → CorralError."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

from corral.errors import (
    CorralError,
    InsufficientStorageError,
    InvalidRequestError,
    ModelNotFoundError,
    RegistryError,
    ServerBusyError,
    ServerUnavailableError,
)

# Built on http.client rather than httpx: importing httpx costs ~0.4 s, and `corral list` must start fast.

_STATUS_ERRORS: dict[int, type[CorralError]] = {
    400: InvalidRequestError,
    404: ModelNotFoundError,
    502: RegistryError,
    503: ServerBusyError,
    507: InsufficientStorageError,
}


class StatusError(CorralError):
    """An error answer from the server; keeps the HTTP status for callers that branch on it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _error_for(status: int, message: str) -> CorralError:
    cls = _STATUS_ERRORS.get(status)
    if cls is not None:
        err = cls(message)
        err.status = status  # type: ignore[attr-defined]
        return err
    return StatusError(message, status)


def _envelope_message(body: bytes, status: int, reason: str) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or f"{status} {reason}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):  # the OpenAI envelope, in case a proxy answers in it
            err = err.get("message")
        if isinstance(err, str) and err:
            return err
    return text or f"{status} {reason}"


class Client:
    """Talks to one server. ``base_url`` is e.g. ``http://127.0.0.1:11434``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float | None = None) -> None:
        scheme, _, rest = base_url.partition("://")
        self.base_url = base_url.rstrip("/")
        self.scheme = scheme
        hostport = rest.split("/", 1)[0]
        if hostport.startswith("["):
            end = hostport.index("]")
            self.host, port = hostport[1:end], hostport[end + 2 :]
        else:
            self.host, _, port = hostport.partition(":")
        self.port = int(port) if port else (443 if scheme == "https" else 80)
        self.api_key = api_key
        self.timeout = timeout

    @classmethod
    def from_config(cls, config: Any) -> Client:
        return cls(config.base_url, api_key=config.api_key)

    # ---- plumbing --------------------------------------------------------------------------------
    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        conn_cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return conn_cls(self.host, self.port, timeout=timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        from corral import __version__

        headers = {"User-Agent": f"corral/{__version__} ({os.uname().sysname.lower()})",
                   "Accept": "application/x-ndjson, application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _send(self, method: str, path: str, body: Any = None, *, raw: BinaryIO | None = None,
              length: int | None = None, timeout: float | None = None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection(timeout if timeout is not None else self.timeout)
        headers: dict[str, str] = {}
        data: Any = None
        if raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(length if length is not None else 0)
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=self._headers(headers))
            resp = conn.getresponse()
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ServerUnavailableError(self._unreachable(exc)) from exc
        return conn, resp

    def _unreachable(self, exc: BaseException) -> str:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        return f"could not connect to a corral server at {self.base_url}: {why}"

    def _raise_for(self, resp: http.client.HTTPResponse) -> None:
        if resp.status >= 400:
            body = resp.read(64 * 1024)  # bounded: an error body is a message, not a payload
            raise _error_for(resp.status, _envelope_message(body, resp.status, resp.reason))

    # ---- public calls ----------------------------------------------------------------------------
    def ping(self, timeout: float = 2.0) -> bool:
        """True when a server answers ``GET /``."""
        try:
            conn, resp = self._send("GET", "/", timeout=timeout)
        except ServerUnavailableError:
            return False
        try:
            resp.read()
            return resp.status < 500
        except OSError:
            return False
        finally:
            conn.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON call; returns the decoded JSON (or None for an empty body)."""
        conn, resp = self._send(method, path, body)
        try:
            self._raise_for(resp)
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailableError(
                f"the server at {self.base_url} closed the connection: {exc}") from exc
        finally:
            conn.close()
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CorralError(f"the server sent a reply that is not JSON: {data[:200]!r}") from exc

    def status(self, method: str, path: str) -> int:
        """Only the status code of a call without a body (HEAD /api/blobs/...)."""
        conn, resp = self._send(method, path)
        try:
            resp.read()
            return resp.status
        finally:
            conn.close()

    def upload(self, path: str, fileobj: BinaryIO, length: int) -> None:
        """POST a file as the raw body, streamed from disk."""
        conn, resp = self._send("POST", path, raw=fileobj, length=length)
        try:
            self._raise_for(resp)
            resp.read()
        finally:
            conn.close()

    def stream(self, method: str, path: str, body: Any) -> Stream:
        """An NDJSON stream; iterate it for dicts, ``close()`` it to stop the server generating."""
        conn, resp = self._send(method, path, body)
        try:
            self._raise_for(resp)
        except BaseException:
            conn.close()
            raise
        return Stream(conn, resp, self.base_url)


class Stream:
    """The lines of one NDJSON answer. An ``{"error": ...}`` line raises; closing drops the connection."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 base_url: str) -> None:
        self._conn = conn
        self._resp = resp
        self._base_url = base_url

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    line = self._resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise ServerUnavailableError(
                        f"the server at {self._base_url} closed the connection mid-answer: {exc}") from exc
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise CorralError(f"the server sent a line that is not JSON: {line[:200]!r}") from exc
                if isinstance(item, dict) and item.get("error"):
                    err = item["error"]
                    raise CorralError(err if isinstance(err, str) else json.dumps(err))
                yield item
        finally:
            self.close()

    def close(self) -> None:
        # Closing the socket is how the server learns the client went away and stops generating.
        try:
            self._resp.close()
        finally:
            self._conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
