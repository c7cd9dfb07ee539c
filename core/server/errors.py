"""Corral errors to HTTP statuses, and each API's error envelope (Ollama, OpenAI, Anthropic)."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from corral import errors as E

Req = Request[Any, Any, Any]

log = logging.getLogger("corral.server")

# Most specific first: the first matching class wins.
STATUS_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (E.InvalidRequestError, 400),
    (E.ModelNotFoundError, 404),
    (E.ServerBusyError, 503),
    (E.InsufficientStorageError, 507),
    (E.InsufficientMemoryError, 507),  # the machine cannot hold what was asked: not a server fault
    (E.RegistryError, 502),
    (E.GenerationCancelledError, 499),
    (E.BackendUnavailableError, 500),
    (E.BackendError, 500),
    (E.CorralError, 500),
)

# compat(ollama): openai.NewError picks the type from the status.
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 413: "invalid_request_error", 503: "server_busy"}


class ErrorBody(msgspec.Struct):
    """The native envelope: ``{"error": "..."}``."""

    error: str


class OpenAIErrorDetail(msgspec.Struct):
    """The inner object of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(msgspec.Struct):
    """The OpenAI envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(msgspec.Struct):
    """The inner object of an Anthropic error."""

    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct):
    """The Anthropic envelope: ``{"type": "error", "error": {"type", "message"}}``."""

    type: str
    error: AnthropicErrorDetail


# compat(anthropic): the documented error types per status (529 is Anthropic's "overloaded").
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}
# llama-server's own routes answer errors in the OpenAI shape, as llama-server does.
_LLAMA_SERVER_PATHS = ("/tokenize", "/detokenize", "/rerank", "/reranking")


def _bad_body(exc: BaseException) -> str | None:
    """What is wrong with a request body Litestar failed to decode before any handler ran, if that is it."""
    if isinstance(exc, UnicodeDecodeError):
        return "invalid JSON in request body: not valid UTF-8"
    if isinstance(exc, RecursionError) and "deserializing" in str(exc):
        return "invalid JSON in request body: nested too deeply"
    return None


def status_for(exc: BaseException) -> int:
    """The HTTP status for an exception: the table for corral errors, the exception's own for HTTP ones."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if _bad_body(exc):
        return 400
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            return status
    return 500


# An absolute path (POSIX, or Windows with a drive letter) inside a message: clients see its last part.
_ABS_PATH = re.compile(r"""(?<![\w.:/~-])(?:[A-Za-z]:[\\/]|/)(?:[^\s/\\'"]+[\\/])+([^\s/\\'"]*)""")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path cut to its file name: no user, home or store layout leaks."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "<path>", text)


def message_for(exc: BaseException) -> str:
    """The text a client sees. Unexpected exceptions never leak their details (paths, addresses)."""
    if isinstance(exc, E.CorralError):
        return scrub_paths(exc.message)
    bad = _bad_body(exc)
    if bad:
        return bad
    if isinstance(exc, ValidationException) or (isinstance(exc, HTTPException) and exc.status_code == 400):
        return validation_message(exc)
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return "internal server error"


def validation_message(exc: HTTPException) -> str:
    """A 400 message naming the offending field, from Litestar's/msgspec's validation details."""
    extra = exc.extra
    msg, key = str(exc.detail or "").strip(), None
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        msg = str(extra[0].get("message", "")).strip() or msg
        key = extra[0].get("key")
    low = msg.lower()
    if "utf-8" in low or "utf8" in low:  # our words, whichever way the decoder puts it
        return "invalid JSON in request body: not valid UTF-8"
    if "truncated" in low or "malformed" in low or "invalid json" in low:
        return f"invalid JSON in request body: {msg}"
    if key and key != "data":  # "data" is Litestar's name for the whole body
        return f"invalid field '{key}': {msg}"
    if key == "data":
        return f"invalid request body: {msg}"
    return msg or "invalid request"


def openai_type(status: int) -> str:
    """OpenAI's error ``type`` for a status."""
    return _OPENAI_TYPES.get(status, "api_error")


def anthropic_body(message: str, status: int) -> AnthropicErrorBody:
    """The Anthropic envelope for a message and status."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return AnthropicErrorBody(type="error", error=AnthropicErrorDetail(type=kind, message=message))


def error_body(path: str, message: str, status: int) -> msgspec.Struct:
    """The envelope of the API that serves ``path``."""
    if path.startswith("/v1/messages"):
        return anthropic_body(message, status)
    if path.startswith("/v1") or path in _LLAMA_SERVER_PATHS:
        return openai_body(message, status)
    return native_body(message)


def native_body(message: str) -> ErrorBody:
    """The native envelope for a message."""
    return ErrorBody(error=message)


def openai_body(message: str, status: int, param: str | None = None) -> OpenAIErrorBody:
    """The OpenAI envelope for a message and status."""
    return OpenAIErrorBody(error=OpenAIErrorDetail(message=message, type=openai_type(status), param=param))


def _log(request: Req, exc: BaseException, status: int) -> None:
    if status >= 500 and not isinstance(exc, E.CorralError):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    elif status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, status, message_for(exc))
    else:  # CORRAL_DEBUG shows why each request was refused, with the traceback
        log.debug("%s %s -> %d: %s", request.method, request.url.path, status, message_for(exc), exc_info=exc)


def _missing_body(request: Req, exc: BaseException) -> bool:
    return isinstance(exc, ValidationException) and request.headers.get("content-length") in ("0", None) \
        and request.headers.get("transfer-encoding") is None


def _status_and_message(request: Req, exc: Exception) -> tuple[int, str]:
    """What either API answers for ``exc`` (logged here): its status and message."""
    status = status_for(exc)
    if isinstance(exc, ValidationException):
        status = 400
    _log(request, exc, status)
    return status, "missing request body" if _missing_body(request, exc) else message_for(exc)


def plain_error(request: Req, exc: Exception) -> Response[msgspec.Struct]:
    """App-level handler: each API's paths get its own envelope (see ``error_body``)."""
    status, msg = _status_and_message(request, exc)
    return Response(error_body(request.url.path, msg, status), status_code=status,
                    media_type="application/json")


# For envelopes written outside Litestar (the security middleware answers before any route runs).
ENCODER_ERRORS = msgspec.json.Encoder()
