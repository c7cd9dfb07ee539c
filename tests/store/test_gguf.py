"""The bounded GGUF reader against valid files and a corpus of hostile or broken ones."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from corral.errors import InvalidModelFileError
from corral.gguf import GGUFArray, details, file_type_name, human_number, read_gguf_info, summarize


def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(key: str, v: int) -> bytes:
    return s(key) + struct.pack("<II", 4, v)


def kv_str(key: str, v: str) -> bytes:
    return s(key) + struct.pack("<I", 8) + s(v)


def tensor(name: str, dims: list[int], ttype: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ttype, offset)


def gguf(kvs: list[bytes], tensors: list[bytes], data: bytes = b"", *, version: int = 3,
         n_kv: int | None = None, n_tensors: int | None = None, align: int = 32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    pad = (-len(body)) % align
    return body + b"\0" * pad + data


GOOD = gguf([kv_str("general.architecture", "llama"), kv_str("general.name", "x"),
             kv_u32("general.file_type", 1)],
            [tensor("a", [4, 2]), tensor("b", [8], offset=32)], b"\1" * 64)


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_reads_a_small_valid_file(tmp_path: Path) -> None:
    info = read_gguf_info(write(tmp_path, GOOD))
    assert info.version == 3 and info.architecture == "llama"
    assert [(t.name, t.shape, t.offset) for t in info.tensors] == [("a", (4, 2), 0), ("b", (8,), 32)]
    assert info.n_params == 16 and info.tensor_data_offset % 32 == 0
    assert file_type_name(info.kv["general.file_type"]) == "F16"


def test_real_tiny_model_and_summary(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    d = details(info)
    assert d.family == "llama" and d.families == ("llama",) and d.quantization_level == "F32"
    assert d.context_length == 2048 and d.embedding_length is not None and d.parameter_size
    summary = summarize(info)
    assert "general.name" not in summary and "tokenizer.chat_template" not in summary
    assert summary["tokenizer.ggml.tokens"] == []  # arrays > 5 elements hidden unless verbose
    assert len(summarize(info, verbose=True)["tokenizer.ggml.tokens"]) > 5
    assert summary["general.parameter_count"] == info.n_params
    fast = read_gguf_info(tiny_gguf, keep_arrays=False)
    assert isinstance(fast.kv["tokenizer.ggml.tokens"], GGUFArray)
    assert summarize(fast)["tokenizer.ggml.tokens"] == []


@pytest.mark.parametrize(("n", "text"), [(268098176, "268.10M"), (8030261248, "8.0B"), (7_000_000_000, "7B"),
                                         (159_000, "159K"), (999, "999"), (1_500_000, "1.50M")])
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


BIG = 1 << 62
ONE_KV = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)  # header: no tensors, one key
CORPUS = {
    "bad magic": (b"GGML" + GOOD[4:], "bad magic"),
    "empty": (b"", "bad magic"),
    "magic only": (b"GGUF", "truncated while reading the version"),
    "version 1": (gguf([], [], version=1), "unsupported GGUF version 1"),
    "version 4": (gguf([], [], version=4), "unsupported GGUF version 4"),
    "huge kv count": (gguf([], [], n_kv=BIG), "metadata count"),
    "huge tensor count": (gguf([], [], n_tensors=2**64 - 1), "tensor count"),
    "kv cut mid-string": (ONE_KV + kv_str("general.architecture", "llama")[:-3],
                          "truncated while reading general.architecture"),
    "string length 2^62": (ONE_KV + struct.pack("<Q", BIG) + b"\0" * 16,
                           "more than"),
    "array length 2^40": (ONE_KV + s("k") + struct.pack("<IIQ", 9, 4, 1 << 40),
                          "elements, more than"),
    "array longer than file": (ONE_KV + s("k") + struct.pack("<IIQ", 9, 4, 1000),
                               "truncated"),
    "nested array": (ONE_KV + s("k") + struct.pack("<IIQ", 9, 9, 1) + b"\0" * 20,
                     "nested array"),
    "unknown value type": (ONE_KV + s("k") + struct.pack("<I", 99) + b"\0" * 8,
                           "unknown value type 99"),
    "alignment 0": (gguf([kv_u32("general.alignment", 0)], []), "alignment: 0"),
    "alignment 3": (gguf([kv_u32("general.alignment", 3)], []), "alignment: 3"),
    "alignment 2^31": (gguf([kv_u32("general.alignment", 1 << 31)], []), "alignment"),
    "alignment as string": (gguf([kv_str("general.alignment", "32")], []), "must be an integer"),
    "5 dimensions": (gguf([], [tensor("t", [1, 1, 1, 1, 1])]), "5 dimensions"),
    "0 dimensions": (gguf([], [tensor("t", [])]), "0 dimensions"),
    "zero dim": (gguf([], [tensor("t", [0])]), "zero or negative dimension"),
    "unknown tensor type": (gguf([], [tensor("t", [4], ttype=77)], b"\0" * 32), "unknown type 77"),
    "tensor past EOF": (gguf([], [tensor("t", [1024])], b"\0" * 64), "past the end of the file"),
    "offset overflow": (gguf([], [tensor("t", [4], offset=2**64 - 32)], b"\0" * 64), "past the end"),
    "shape overflow": (gguf([], [tensor("t", [2**32, 2**32, 2**32])], b"\0" * 64), "shape overflows"),
    "misaligned offset": (gguf([], [tensor("t", [4], offset=3)], b"\0" * 64), "not aligned"),
    "overlap": (gguf([], [tensor("a", [8]), tensor("b", [8], offset=0)], b"\0" * 64), "overlap"),
    "bad block size": (gguf([], [tensor("q", [33], ttype=8)], b"\0" * 64), "not a multiple of 32"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_corpus(tmp_path: Path, case: str) -> None:
    data, message = CORPUS[case]
    t = time.monotonic()
    with pytest.raises(InvalidModelFileError, match=message):
        read_gguf_info(write(tmp_path, data))
    assert time.monotonic() - t < 1.0


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_real_model(tmp_path: Path, tiny_gguf: Path, fraction: float) -> None:
    data = tiny_gguf.read_bytes()
    with pytest.raises(InvalidModelFileError, match="truncated|past the end"):
        read_gguf_info(write(tmp_path, data[: int(len(data) * fraction)]))


def test_not_regular_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        read_gguf_info("/dev/zero")
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        read_gguf_info(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        read_gguf_info(fifo)  # must not block waiting for a writer
    with pytest.raises(InvalidModelFileError, match="cannot read"):
        read_gguf_info(tmp_path / "missing.gguf")


def test_symlink_to_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "zero.gguf"
    link.symlink_to("/dev/zero")
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        read_gguf_info(link)


def test_metadata_size_cap(tmp_path: Path) -> None:
    data = gguf([kv_str("k", "x" * 5000)], [])
    with pytest.raises(InvalidModelFileError, match="metadata is larger"):
        read_gguf_info(write(tmp_path, data), max_kv_bytes=1000)
