"""A bounded pure-Python GGUF header reader that never trusts a count, length or offset."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from corral.errors import InvalidModelFileError
from corral.spec import ModelDetails

MAGIC = b"GGUF"
MAX_STRING = 16 * 1024 * 1024  # bytes in one string
MAX_ARRAY = 64 * 1024 * 1024  # elements in one array
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
DEFAULT_MAX_KV_BYTES = 512 * 1024 * 1024

# GGUF value types: (struct format, size); 8 = string, 9 = array.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
               7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


class TensorInfo(msgspec.Struct, frozen=True, array_like=True):
    """One tensor's header entry: name, ggml type id, shape (ne order) and offset in the data."""

    name: str
    type: int
    shape: tuple[int, ...]
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.type).name


class GGUFInfo(msgspec.Struct, kw_only=True):
    """Everything in a GGUF header; tensor data itself is never read."""

    version: int
    kv: dict[str, Any]
    tensors: list[TensorInfo]
    tensor_data_offset: int
    alignment: int
    file_size: int

    @property
    def architecture(self) -> str:
        arch = self.kv.get("general.architecture")
        return arch if isinstance(arch, str) else ""

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)


class _Reader:
    """Reads little-endian fields, checking every length against what is left of the file."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size, self.pos = f, size, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise InvalidModelFileError(f"invalid GGUF file: truncated while reading {what}")
        data = self.f.read(n)
        if len(data) != n:
            raise InvalidModelFileError(f"invalid GGUF file: truncated while reading {what}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise InvalidModelFileError(f"invalid GGUF file: truncated while reading {what}")
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def scalar(self, vtype: int, what: str) -> Any:
        fmt, n = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(n, what))[0]

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack("<Q", self.take(8, what))[0]
        return value

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        if n > MAX_STRING:
            raise InvalidModelFileError(
                f"invalid GGUF file: {what} declares {n} bytes, more than the {MAX_STRING} allowed")
        return self.take(n, what).decode("utf-8", errors="replace")


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading only if it is a regular file (never a device, FIFO or directory)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidModelFileError(f"cannot read model file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelFileError("not a GGUF file: the path is not a regular file")
    # O_NONBLOCK so that a FIFO swapped in after the stat cannot block the open; fstat re-checks.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InvalidModelFileError(f"cannot read model file: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidModelFileError("not a GGUF file: the path is not a regular file")
    return os.fdopen(fd, "rb", buffering=1 << 16), st.st_size


def read_gguf_info(path: str | os.PathLike[str], *, max_kv_bytes: int = DEFAULT_MAX_KV_BYTES,
                   keep_arrays: bool = True, keep: frozenset[str] = frozenset()) -> GGUFInfo:
    """Read and validate a GGUF header.

    Args:
        path: the file; it must be a regular file.
        max_kv_bytes: refuse metadata sections larger than this.
        keep_arrays: when False, arrays of more than 5 elements are validated and skipped (their
            value becomes a ``GGUFArray`` stub holding only type and length), which is much faster
            for 256k-token vocabularies.
        keep: keys whose arrays are read even when ``keep_arrays`` is False.

    Raises:
        InvalidModelFileError: with a message naming the field that is wrong.
    """
    f, size = _open_regular(Path(path))
    with f:
        return _parse(_Reader(f, size), size, max_kv_bytes, keep_arrays, keep)


class GGUFArray(msgspec.Struct, frozen=True):
    """An array value that was skipped: its element type and length."""

    type: str
    length: int


def _parse(r: _Reader, size: int, max_kv_bytes: int, keep_arrays: bool,
           keep: frozenset[str] = frozenset()) -> GGUFInfo:
    if size < 4 or r.take(4, "the magic number") != MAGIC:
        raise InvalidModelFileError("not a GGUF file: bad magic number")
    version = r.u32("the version")
    if version not in (2, 3):
        raise InvalidModelFileError(f"unsupported GGUF version {version} (only 2 and 3 are supported)")
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the metadata count")
    # Each KV takes at least 12 bytes and each tensor info at least 24, so counts the file
    # cannot hold are rejected before any loop runs.
    if n_kv * 12 > size - r.pos:
        raise InvalidModelFileError(f"invalid GGUF file: metadata count {n_kv} exceeds what the file holds")
    if n_tensors * 24 > size - r.pos:
        raise InvalidModelFileError(
            f"invalid GGUF file: tensor count {n_tensors} exceeds what the file holds")
    kv: dict[str, Any] = {}
    start = r.pos
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        vtype = r.u32(f"the type of {key}")
        kv[key] = _value(r, vtype, key, keep_arrays or key in keep)
        if r.pos - start > max_kv_bytes:
            raise InvalidModelFileError(f"invalid GGUF file: metadata is larger than {max_kv_bytes} bytes")
    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int):
        raise InvalidModelFileError("invalid GGUF file: general.alignment must be an integer")
    if alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 30:
        raise InvalidModelFileError(f"invalid GGUF alignment: {alignment} (must be a power of 2)")
    _check_known_keys(kv)
    tensors = [_tensor(r, i) for i in range(n_tensors)]
    data_offset = -(-r.pos // alignment) * alignment
    _check_tensors(tensors, data_offset, alignment, size)
    return GGUFInfo(version=version, kv=kv, tensors=tensors, tensor_data_offset=data_offset,
                    alignment=alignment, file_size=size)


# Keys corral (and llama.cpp) read as one type: any other type is refused here, at create, rather
# than failing later (a string parameter count, a float block count, an array architecture).
_STRING_KEYS = ("general.architecture", "general.name", "tokenizer.chat_template", "tokenizer.ggml.model")
_COUNT_KEYS = ("general.parameter_count", "general.file_type", "general.quantization_version")
_ARCH_COUNT_KEYS = ("context_length", "embedding_length", "block_count")
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "eot_token_id", "padding_token_id", "unknown_token_id")
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS: more overflows fixed-size arrays there


def _check_known_keys(kv: dict[str, Any]) -> None:
    def bad(key: str, want: str) -> InvalidModelFileError:
        got = kv[key]
        kind = "array" if isinstance(got, (list, GGUFArray)) else "bool" if isinstance(got, bool) \
            else "string" if isinstance(got, str) else "float" if isinstance(got, float) else "integer"
        return InvalidModelFileError(f"invalid GGUF file: {key} must be {want}, not {kind}")

    for key in _STRING_KEYS:
        if key in kv and not isinstance(kv[key], str):
            raise bad(key, "a string")
    arch = kv.get("general.architecture", "")
    for key in [*_COUNT_KEYS, *(f"{arch}.{k}" for k in _ARCH_COUNT_KEYS if arch)]:
        v = kv.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise bad(key, "a non-negative integer")
    for key in (f"tokenizer.ggml.{k}" for k in _TOKEN_ID_KEYS):
        v = kv.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise bad(key, "an integer")
    layers = kv.get(f"{arch}.block_count")
    if arch and isinstance(layers, int) and layers > MAX_LAYERS:
        raise InvalidModelFileError(f"invalid GGUF file: {arch}.block_count {layers} exceeds {MAX_LAYERS}")


def _value(r: _Reader, vtype: int, key: str, keep_arrays: bool) -> Any:
    if vtype in _SCALARS:
        return r.scalar(vtype, key)
    if vtype == _STRING:
        return r.string(key)
    if vtype != _ARRAY:
        raise InvalidModelFileError(f"invalid GGUF file: {key} has unknown value type {vtype}")
    etype = r.u32(f"the element type of {key}")
    n = r.u64(f"the length of {key}")
    if n > MAX_ARRAY:
        raise InvalidModelFileError(
            f"invalid GGUF file: {key} declares {n} elements, more than the {MAX_ARRAY} allowed")
    if etype in _SCALARS:
        fmt, width = _SCALARS[etype]
        if not keep_arrays and n > 5:
            r.skip(n * width, key)
            return GGUFArray(_TYPE_NAMES[etype], n)
        raw = r.take(n * width, key)
        return list(struct.unpack(f"<{n}{fmt[1]}", raw))
    if etype == _STRING:
        if not keep_arrays and n > 5:
            for i in range(n):
                ln = r.u64(f"the length of {key}[{i}]")
                if ln > MAX_STRING:
                    raise InvalidModelFileError(f"invalid GGUF file: {key}[{i}] is too long")
                r.skip(ln, key)
            return GGUFArray("string", n)
        return [r.string(f"{key}[{i}]") for i in range(n)]
    if etype == _ARRAY:
        # Nested arrays are legal GGUF but no model uses them; bound the recursion to one level.
        raise InvalidModelFileError(f"invalid GGUF file: {key} is a nested array")
    raise InvalidModelFileError(f"invalid GGUF file: {key} has unknown element type {etype}")


def _tensor(r: _Reader, i: int) -> TensorInfo:
    name = r.string(f"the name of tensor #{i}")
    n_dims = r.u32(f"the dimension count of tensor {name}")
    if n_dims == 0 or n_dims > MAX_DIMS:
        raise InvalidModelFileError(
            f"invalid GGUF file: tensor {name} has {n_dims} dimensions (1 to 4 allowed)")
    shape = tuple(r.u64(f"the shape of tensor {name}") for _ in range(n_dims))
    ttype = r.u32(f"the type of tensor {name}")
    offset = r.u64(f"the offset of tensor {name}")
    try:
        GGMLQuantizationType(ttype)
    except ValueError:
        raise InvalidModelFileError(f"invalid GGUF file: tensor {name} has unknown type {ttype}") from None
    return TensorInfo(name, ttype, shape, offset)


def tensor_nbytes(t: TensorInfo) -> int:
    """Bytes of tensor data; raises when the shape overflows or does not fit the block size."""
    block, width = GGML_QUANT_SIZES[GGMLQuantizationType(t.type)]
    n = 1
    for d in t.shape:
        if d <= 0:
            raise InvalidModelFileError(
                f"invalid GGUF file: tensor {t.name} has a zero or negative dimension")
        n *= d
        if n >= 1 << 62:
            raise InvalidModelFileError(f"invalid GGUF file: tensor {t.name} shape overflows")
    if t.shape[0] % block:
        raise InvalidModelFileError(
            f"invalid GGUF file: tensor {t.name} row length {t.shape[0]} is not a multiple of {block}")
    return n // block * width


def _check_tensors(tensors: list[TensorInfo], data_offset: int, alignment: int, size: int) -> None:
    spans = []
    for t in tensors:
        nbytes = tensor_nbytes(t)
        if t.offset % alignment:
            raise InvalidModelFileError(f"invalid GGUF file: tensor {t.name} offset is not aligned")
        end = data_offset + t.offset + nbytes
        if end > size:
            raise InvalidModelFileError(
                f"invalid GGUF file: tensor {t.name} ends past the end of the file (truncated?)")
        spans.append((t.offset, t.offset + nbytes, t.name))
    spans.sort()
    for (_, prev_end, prev), (start, _, name) in zip(spans, spans[1:], strict=False):
        if start < prev_end:
            raise InvalidModelFileError(f"invalid GGUF file: tensors {prev} and {name} overlap")


# ---- summaries for show / tags -------------------------------------------------------------------
def file_type_name(value: Any) -> str:
    """Ollama's quantization label for ``general.file_type`` ("Q4_K_M", "F16", ...)."""
    try:
        name = LlamaFileType(int(value)).name
    except (TypeError, ValueError):
        return "unknown"
    return name.replace("MOSTLY_", "").replace("ALL_", "").replace("_MOE", "")


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 268098176 → "268.10M", 8030261248 → "8.0B"."""
    for scale, unit, digits in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.{digits}f}{unit}"
    return str(n)


def quantization(info: GGUFInfo) -> str:
    """The file type label, falling back to the most common tensor type."""
    if "general.file_type" in info.kv:
        return file_type_name(info.kv["general.file_type"])
    counts: dict[str, int] = {}
    for t in info.tensors:
        counts[t.type_name] = counts.get(t.type_name, 0) + t.n_elements
    return max(counts, key=counts.__getitem__) if counts else "unknown"


def details(info: GGUFInfo, parent_model: str = "") -> ModelDetails:
    """``details`` from the header: family, parameter size, quantization, context and embedding length."""
    arch = info.architecture
    lengths = {}
    for name in ("context_length", "embedding_length"):
        value = info.kv.get(f"{arch}.{name}")
        lengths[name] = value if isinstance(value, int) and not isinstance(value, bool) else None
    return ModelDetails(
        parent_model=parent_model,
        format="gguf",
        family=arch,
        families=(arch,) if arch else (),
        parameter_size=human_number(int(info.kv.get("general.parameter_count") or info.n_params)),
        quantization_level=quantization(info),
        context_length=lengths["context_length"],
        embedding_length=lengths["embedding_length"],
    )


def summarize(info: GGUFInfo, verbose: bool = False) -> dict[str, Any]:
    """``model_info`` as Ollama's show reports it.

    compat(ollama): drops general.name and tokenizer.chat_template, shows arrays longer than 5
    elements as [] unless verbose, and adds general.parameter_count.
    """
    out: dict[str, Any] = {}
    for key, value in info.kv.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        if isinstance(value, GGUFArray) or (isinstance(value, list) and len(value) > 5 and not verbose):
            value = [] if not (verbose and isinstance(value, list)) else value
        out[key] = value
    out.setdefault("general.parameter_count", info.n_params)
    return dict(sorted(out.items()))
