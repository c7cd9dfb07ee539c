"""Checks and formatting shared by both wire layers: model names, keep_alive, options, images, ids, times."""

from __future__ import annotations

import base64
import binascii
import secrets
import string
import time
from datetime import datetime, timezone
from typing import Any

from corral.config import parse_duration
from corral.errors import InvalidRequestError

_ID_ALPHABET = string.ascii_lowercase + string.digits


def require_model(name: str) -> str:
    """The model name, or 400 when it is missing."""
    name = name.strip()
    if not name:
        raise InvalidRequestError("model is required")
    return name


def keep_alive(value: float | str | None) -> float | None:
    """Seconds (inf = forever) from a number or a Go duration string; None = server default."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        raise InvalidRequestError("invalid keep_alive: not a number")
    try:
        return parse_duration(value)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequestError(f"invalid keep_alive: {exc}") from None


def options(value: dict[str, Any] | None) -> dict[str, Any]:
    """The request's ``options`` object (type checks and the merge with model parameters are the engine's)."""
    return dict(value) if value else {}


def decode_image(text: str, field: str = "images") -> bytes:
    """Raw bytes from a base64 image (a ``data:`` URI prefix is tolerated)."""
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"invalid {field}: not valid base64 image data") from None


END_USER = "corral.end_user"  # scope state key: the ``user`` a request was made for (the access log shows it)


def note_end_user(request: Any, user: str) -> None:
    """Keep the end user a request names for the access log line (OpenAI's ``user``, for abuse tracing)."""
    if user:
        request.scope.setdefault("state", {})[END_USER] = user


def call_id() -> str:
    """A tool-call id in Ollama's form: ``call_`` and 8 random characters."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def now_rfc3339() -> str:
    """UTC now as RFC 3339 with microseconds and ``Z``, as Go's RFC3339Nano prints it."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def rfc3339(ts: float | datetime | str | None) -> str:
    """A timestamp (unix seconds, datetime or text) as RFC 3339 UTC."""
    if ts is None:
        return now_rfc3339()
    if isinstance(ts, str):
        return ts
    if isinstance(ts, datetime):
        dt = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    else:
        dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def unix_now() -> int:
    """Whole seconds since the epoch (OpenAI's ``created``)."""
    return int(time.time())
