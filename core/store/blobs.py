"""Content-addressed blobs: the one digest validator, atomic commits, and per-blob file locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from corral.errors import InsufficientStorageError, InvalidRequestError

# Lowercase only: two spellings of one digest must never name two files (case-insensitive FS).
_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-f]{64})")
TMP_DIR = ".corral-tmp"  # partial downloads and uploads (never a valid blob name)
LOCK_DIR = ".corral-locks"
CHUNK = 1 << 20


def normalize_digest(digest: str) -> str:
    """``sha256:<64 lowercase hex>`` from that or ``sha256-<hex>``; anything else is refused."""
    if not isinstance(digest, str):
        raise InvalidRequestError("invalid digest format")
    m = _DIGEST_RE.fullmatch(digest)
    if not m:
        shown = digest[:80] if digest.isprintable() else repr(digest[:80])
        raise InvalidRequestError(f'invalid digest format "{shown}": expected sha256:<64 lowercase hex>')
    return f"sha256:{m.group(1)}"


def is_valid_digest(digest: str) -> bool:
    try:
        normalize_digest(digest)
    except InvalidRequestError:
        return False
    return True


def blob_path(blobs_dir: Path, digest: str) -> Path:
    """THE path builder for blobs: validates the digest, then checks the result stays inside."""
    d = normalize_digest(digest)
    path = blobs_dir / ("sha256-" + d[7:])
    if path.parent != blobs_dir or not path.resolve().is_relative_to(blobs_dir.resolve()):
        raise InvalidRequestError("invalid digest format")
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(blobs_dir: Path, stem: str) -> Path:
    tmp = blobs_dir / TMP_DIR
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp / f"{stem}.{uuid.uuid4().hex}.tmp"


def commit_file(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it onto ``final``, fsync the directory: readers see all or nothing."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o644)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(final: Path, data: bytes) -> None:
    """Write small ``data`` (a manifest) to ``final`` atomically; the parent must exist."""
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        commit_file(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path, *, limit: int | None = None) -> tuple[str, int]:
    """(``sha256:<hex>``, size) of a file, streamed in 1 MiB reads (memory stays flat)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            want = CHUNK if limit is None else min(CHUNK, limit - n)
            if want <= 0:
                break
            chunk = f.read(want)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def storage_error(exc: OSError, what: str) -> Exception:
    """A clear error for a full disk; other OS errors are returned unchanged."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorageError(f"no space left on device while {what}; free some space and retry")
    return exc


class BlobWriter:
    """Streams bytes into a temp file while hashing; ``commit`` verifies and renames atomically."""

    def __init__(self, blobs_dir: Path, expected: str | None) -> None:
        self.blobs_dir = blobs_dir
        self.expected = normalize_digest(expected) if expected else None
        self.tmp = temp_path(blobs_dir, "upload")
        self._f = open(self.tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self._f.write(chunk)
        except OSError as exc:
            raise storage_error(exc, "writing a blob") from exc
        self._h.update(chunk)
        self.size += len(chunk)

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()

    def commit(self) -> tuple[str, bool]:
        """(digest, created). Raises ``InvalidRequestError`` on mismatch (nothing is kept)."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:
            self.abort()
            raise storage_error(exc, "writing a blob") from exc
        self._f.close()
        got = self.digest
        if self.expected and got != self.expected:
            self.abort()
            raise InvalidRequestError(f'digest mismatch, expected "{self.expected}", got "{got}"')
        final = blob_path(self.blobs_dir, got)
        with blob_lock(self.blobs_dir, got):
            if final.is_file() and final.stat().st_size == self.size:
                self.abort()
                os.utime(final)  # refresh mtime so GC's grace period covers a pending create
                return got, False
            commit_file(self.tmp, final)
        return got, True

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        self.tmp.unlink(missing_ok=True)


def write_blob(blobs_dir: Path, expected: str | None, chunks: Iterable[bytes]) -> tuple[str, bool]:
    """Stream ``chunks`` into a blob and commit it: (digest, created). Nothing is kept if anything fails."""
    writer = BlobWriter(blobs_dir, expected)
    try:
        for chunk in chunks:
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def file_chunks(paths: Iterable[str | os.PathLike[str]]) -> Iterator[bytes]:
    """The bytes of the files at ``paths``, one after another, in ``CHUNK``-sized pieces."""
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


@contextlib.contextmanager
def blob_lock(blobs_dir: Path, digest: str, *, shared: bool = False) -> Iterator[None]:
    """Cross-process ``flock`` on one digest (two servers sharing one store)."""
    d = normalize_digest(digest)
    with file_lock(blobs_dir / LOCK_DIR / f"sha256-{d[7:]}.lock", shared=shared):
        yield


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold ``flock`` on ``path``; yields False (and holds nothing) if non-blocking and busy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
