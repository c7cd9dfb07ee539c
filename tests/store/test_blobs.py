"""Blob paths (one validating builder), atomic writes and uploads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import string
from pathlib import Path

import pytest

from corral.errors import InvalidRequestError
from corral.store import Store
from corral.store.blobs import blob_path, normalize_digest, write_atomic

HEX = "0123456789abcdef"


def test_valid_digests_map_inside_blobs(tmp_path: Path) -> None:
    h = "ab" * 32
    assert blob_path(tmp_path, f"sha256:{h}") == tmp_path / f"sha256-{h}"
    assert blob_path(tmp_path, f"sha256-{h}") == tmp_path / f"sha256-{h}"
    assert normalize_digest(f"sha256-{h}") == f"sha256:{h}"


def _mutations(rng: random.Random) -> list[str]:
    good = "sha256:" + "".join(rng.choice(HEX) for _ in range(64))
    alphabet = string.printable + "\x00/\\.:-é"
    out = []
    for _ in range(300):
        chars = list(good)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            i = rng.randrange(len(chars) + 1)
            if op < 0.4 and chars:
                chars[min(i, len(chars) - 1)] = rng.choice(alphabet)
            elif op < 0.7:
                chars.insert(i, rng.choice(alphabet))
            elif chars:
                del chars[min(i, len(chars) - 1)]
        out.append("".join(chars))
    return out + ["", "sha256:", "../../etc/passwd", "sha256:../../" + "a" * 56, "sha256:" + "A" * 64,
                  "sha256:" + "a" * 63, "sha256:" + "a" * 65, "SHA256:" + "a" * 64,
                  "sha256:" + "a" * 64 + "\n",
                  "sha512:" + "a" * 64, "sha256:" + "g" * 64]


def test_every_malformed_digest_is_refused(tmp_path: Path) -> None:
    """Property: a string is accepted iff it is sha256[:-] + 64 lowercase hex, and then stays inside."""
    import re

    store = Store(tmp_path / "models")
    for digest in _mutations(random.Random(1234)):
        ok = re.fullmatch(r"sha256[:-][0-9a-f]{64}", digest) is not None
        if ok:
            assert store.blob_path(digest).parent == store.blobs_dir
        else:
            with pytest.raises(InvalidRequestError, match="invalid digest"):
                store.blob_path(digest)
            with pytest.raises(InvalidRequestError):
                store.has_blob(digest)
    assert not store.root.exists()  # validating never creates anything


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "m"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp file left behind


async def _chunks(data: bytes, n: int = 7):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), n):
        yield data[i:i + n]


def test_put_blob(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    data = os.urandom(1000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert asyncio.run(store.put_blob(digest, _chunks(data))) is True
    assert asyncio.run(store.put_blob(digest, _chunks(data))) is False
    assert store.blob_path(digest).read_bytes() == data
    assert oct(store.blob_path(digest).stat().st_mode & 0o777) == "0o644"


def test_put_blob_mismatch_keeps_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    claimed = "sha256:" + "0" * 64
    data = b"not what was promised"
    with pytest.raises(InvalidRequestError) as err:
        asyncio.run(store.put_blob(claimed, _chunks(data)))
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    assert str(err.value) == f'digest mismatch, expected "{claimed}", got "{got}"'
    assert not store.blob_path(claimed).exists() and not store.blob_path(got).exists()
    assert not list((store.blobs_dir / ".corral-tmp").iterdir())


def test_put_blob_bad_digest_touches_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    with pytest.raises(InvalidRequestError, match="invalid digest"):
        asyncio.run(store.put_blob("sha256:../../x", _chunks(b"x")))
    assert not store.root.exists()
