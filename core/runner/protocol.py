"""The runner's private wire: length-prefixed msgpack frames carrying tagged msgspec messages."""

from __future__ import annotations

import struct
from typing import Any

import msgspec
from msgspec import Struct

from corral import errors
from corral.spec import ModelSpec
from corral.types import DeviceInfo, GenerationRequest, LoadOptions, TokenEvent

# A frame is a 4-byte big-endian length then that many bytes of msgpack. The cap keeps a corrupt or
# hostile length from making either side allocate gigabytes.
HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


# ---- parent -> runner ----------------------------------------------------------------------------
class Load(Struct, tag="load", kw_only=True):
    id: int
    model: ModelSpec
    options: LoadOptions
    memory_limits: dict[str, int] | None = None


class Estimate(Struct, tag="estimate", kw_only=True):
    id: int
    model: ModelSpec
    options: LoadOptions


class Tokenize(Struct, tag="tokenize", kw_only=True):
    id: int
    text: str
    add_special: bool = True
    parse_special: bool = True


class Detokenize(Struct, tag="detokenize", kw_only=True):
    id: int
    tokens: list[int]
    render_special: bool = False


class Pieces(Struct, tag="pieces", kw_only=True):
    id: int
    tokens: list[int]


class Generate(Struct, tag="generate", kw_only=True):
    id: int
    request: GenerationRequest


class Embed(Struct, tag="embed", kw_only=True):
    id: int
    inputs: list[list[int]]
    normalize: bool = True


class Rerank(Struct, tag="rerank", kw_only=True):
    id: int
    query: str
    documents: list[str]


class Unload(Struct, tag="unload", kw_only=True):
    id: int


class Quantize(Struct, tag="quantize", kw_only=True):
    id: int
    source: str
    destination: str
    file_type: str


class Cancel(Struct, tag="cancel", kw_only=True):
    target: int  # the id of the generate or embed request to stop


# answered by id
Request = Load | Estimate | Tokenize | Detokenize | Pieces | Generate | Embed | Rerank | Unload | Quantize
ToRunner = Request | Cancel


# ---- runner -> parent ----------------------------------------------------------------------------
class Ready(Struct, tag="ready", kw_only=True):
    """Sent once the runner has its plugin manager and a selected backend (or failed to get one)."""

    pid: int
    backend: str = ""
    devices: list[DeviceInfo] = msgspec.field(default_factory=list)  # the backend's, as probed
    error: str = ""
    error_kind: str = ""


class Result(Struct, tag="result", kw_only=True):
    id: int
    value: Any = None


class Events(Struct, tag="events", kw_only=True):
    """Token events of one generate request; the last one of a stream has ``finish_reason``."""

    id: int
    events: list[TokenEvent]


class LoadProgress(Struct, tag="load_progress", kw_only=True):
    """How far the load request ``id`` has got: the fraction of the weights loaded (0.0 to 1.0)."""

    id: int
    fraction: float


class Failure(Struct, tag="failure", kw_only=True):
    id: int
    kind: str  # the corral.errors class name
    message: str


FromRunner = Ready | Result | Events | LoadProgress | Failure


_encoder = msgspec.msgpack.Encoder()


def encode(msg: Struct) -> bytes:
    """One whole frame (header included) for ``msg``."""
    body = _encoder.encode(msg)
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    n: int = HEADER.unpack(header)[0]
    if n > MAX_FRAME:
        raise ValueError(f"runner frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    return n


to_runner_decoder = msgspec.msgpack.Decoder(ToRunner)
from_runner_decoder = msgspec.msgpack.Decoder(FromRunner)


def error_from(kind: str, message: str) -> errors.CorralError:
    """Rebuild the CorralError the runner raised; an unknown kind becomes a BackendError."""
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.CorralError)):
        cls = errors.BackendError
    return cls(message)


def failure_of(request_id: int, exc: BaseException) -> Failure:
    """The frame that carries ``exc`` back to the parent (non-corral errors are backend errors)."""
    if isinstance(exc, errors.CorralError):
        return Failure(id=request_id, kind=type(exc).__name__, message=exc.message)
    return Failure(id=request_id, kind="BackendError", message=f"{type(exc).__name__}: {exc}")
