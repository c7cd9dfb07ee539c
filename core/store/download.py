"""One blob download: parallel ranged parts, resumable state on disk, verify, then commit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import msgspec

from corral.errors import CorralError, InsufficientStorageError, RegistryError
from corral.names import ModelName
from corral.store import blobs as _blobs
from corral.store.layout import StoreLayout
from corral.store.transfer import RegistryClient, TransferSettings, raise_for_status

log = logging.getLogger("corral.store.download")
_FLUSH = 1 << 20  # write to disk in 1 MiB pieces (off the event loop)


class Part(msgspec.Struct):
    """A byte range [offset, offset+size) of the blob and how much of it is on disk."""

    offset: int
    size: int
    completed: int = 0


class _State(msgspec.Struct):
    digest: str
    size: int
    parts: list[Part]


class Download:
    """A download shared by every pull of this store that needs the blob (``Store._downloads``)."""

    def __init__(self, digest: str, size: int) -> None:
        self.digest = digest
        self.size = size
        self.completed = 0
        self.waiters = 0
        self.task: asyncio.Task[None] = None  # type: ignore[assignment]  # set right after creation


def _paths(store: StoreLayout, digest: str) -> tuple[Path, Path]:
    stem = "sha256-" + _blobs.normalize_digest(digest)[7:]
    tmp = store.blobs_dir / _blobs.TMP_DIR
    return tmp / f"{stem}.partial", tmp / f"{stem}.partial.json"


def _load_state(store: StoreLayout, digest: str, size: int) -> _State | None:
    partial, sidecar = _paths(store, digest)
    try:
        state = msgspec.json.decode(sidecar.read_bytes(), type=_State)
        if partial.stat().st_size != size:
            return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    # Trust the sidecar only if its parts tile [0, size) exactly.
    pos = 0
    for p in state.parts:
        if p.offset != pos or p.size <= 0 or not 0 <= p.completed <= p.size:
            return None
        pos += p.size
    if state.digest != digest or state.size != size or pos != size:
        return None
    return state


def partial_progress(store: StoreLayout, digest: str, size: int) -> int:
    """Bytes of ``digest`` already on disk from an interrupted download."""
    state = _load_state(store, digest, size)
    return sum(p.completed for p in state.parts) if state else 0


def _plan(size: int, s: TransferSettings) -> list[Part]:
    part = min(max(size // max(1, s.parts), s.min_part), s.max_part) if size else 1
    parts, pos = [], 0
    while pos < size:
        n = min(part, size - pos)
        parts.append(Part(pos, n))
        pos += n
    return parts or [Part(0, 0)]


def _save(sidecar: Path, state: _State) -> None:
    # No fsync: this survives kill -9 (page cache); after a power loss the final hash catches it.
    tmp = sidecar.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.encode(state))
    os.replace(tmp, sidecar)


@contextlib.asynccontextmanager
async def _locked(store: StoreLayout, digest: str) -> AsyncIterator[None]:
    """Cross-process exclusive flock on the digest, polled so no thread blocks on it."""
    path = store.blobs_dir / _blobs.LOCK_DIR / f"sha256-{_blobs.normalize_digest(digest)[7:]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)  # another server on this store is downloading it
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


async def run_download(store: StoreLayout, dl: Download, name: ModelName, *, insecure: bool,
                       token: str | None, settings: TransferSettings) -> None:
    """Download ``dl.digest`` into the store; verify its sha256 before it becomes visible."""
    final = store.blob_path(dl.digest)
    async with _locked(store, dl.digest), RegistryClient(name, insecure=insecure, settings=settings,
                                                         token=token) as client:
        for attempt in (1, 2):
            if await asyncio.to_thread(lambda: final.is_file() and final.stat().st_size == dl.size):
                dl.completed = dl.size
                return
            await _fetch(store, dl, client, settings)
            got, n = await asyncio.to_thread(_blobs.sha256_file, _paths(store, dl.digest)[0], limit=dl.size)
            if got == dl.digest and n == dl.size:
                await asyncio.to_thread(_commit, store, dl.digest)
                return
            # A wrong byte anywhere means no part can be trusted: start over once, then give up.
            await asyncio.to_thread(_discard, store, dl.digest)
            dl.completed = 0
            log.warning("digest mismatch for %s (got %s), attempt %d", dl.digest, got, attempt)
        raise RegistryError(
            f"digest mismatch, file must be downloaded again: expected {dl.digest}, got {got}")


def _commit(store: StoreLayout, digest: str) -> None:
    partial, sidecar = _paths(store, digest)
    _blobs.commit_file(partial, store.blob_path(digest))
    sidecar.unlink(missing_ok=True)


def _discard(store: StoreLayout, digest: str) -> None:
    for p in _paths(store, digest):
        p.unlink(missing_ok=True)


def _prepare(store: StoreLayout, dl: Download, settings: TransferSettings) -> _State:
    partial, sidecar = _paths(store, dl.digest)
    state = _load_state(store, dl.digest, dl.size)
    if state is None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:
            f.truncate(dl.size)  # sparse; parts write into their own ranges
        state = _State(dl.digest, dl.size, _plan(dl.size, settings))
        _save(sidecar, state)
    else:
        log.info("resuming %s at %d of %d bytes", dl.digest, sum(p.completed for p in state.parts), dl.size)
    return state


async def _fetch(store: StoreLayout, dl: Download, client: RegistryClient,
                 settings: TransferSettings) -> None:
    state = await asyncio.to_thread(_prepare, store, dl, settings)
    partial, sidecar = _paths(store, dl.digest)
    dl.completed = sum(p.completed for p in state.parts)
    fd = os.open(partial, os.O_WRONLY)
    sem = asyncio.Semaphore(max(1, settings.parallel))
    last_save = [time.monotonic()]

    def save(force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last_save[0] >= settings.save_interval:
            last_save[0] = now
            _save(sidecar, state)

    async def one(part: Part) -> None:
        async with sem:
            await _fetch_part(client, dl, part, fd, settings, save)

    tasks = [asyncio.ensure_future(one(p)) for p in state.parts if p.completed < p.size]
    try:
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        save(force=True)
        os.close(fd)


async def _fetch_part(client: RegistryClient, dl: Download, part: Part, fd: int, settings: TransferSettings,
                      save: Callable[..., None]) -> None:
    url = client.url("blobs", dl.digest)
    delay = settings.backoff
    for attempt in range(settings.retries + 1):
        try:
            await _stream_part(client, url, dl, part, fd, save)
            if part.completed >= part.size:
                save(force=True)
                return
            raise httpx.RemoteProtocolError("response ended early")
        except _Retryable as exc:
            if attempt >= settings.retries:
                raise RegistryError(f"downloading {dl.digest[7:19]} failed after {settings.retries} retries: "
                                    f"{exc}") from None
            log.info("part at %d of %s: %s; retrying in %.1fs", part.offset, dl.digest[7:19], exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.backoff_max)


class _ServerError(Exception):
    pass


_Retryable = (httpx.TransportError, _ServerError)


async def _stream_part(client: RegistryClient, url: str, dl: Download, part: Part, fd: int,
                       save: Callable[..., None]) -> None:
    start, end = part.offset + part.completed, part.offset + part.size  # end exclusive
    resp = await client.send("GET", url, headers={"Range": f"bytes={start}-{end - 1}"})
    try:
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _ServerError(f"registry answered {resp.status_code}")
        await raise_for_status(resp, f"pulling {dl.digest[7:19]}")
        if resp.status_code == 206:
            skip = 0
            crange = resp.headers.get("content-range", "")
            if not crange.startswith(f"bytes {start}-"):
                raise _ServerError(f"registry sent the wrong range ({crange[:60] or 'none'})")
        elif resp.status_code == 200:
            skip = start  # the registry ignored Range: read past what we have
        else:
            raise RegistryError(f"pulling {dl.digest[7:19]}: unexpected status {resp.status_code}")
        buf = bytearray()
        pos = start
        try:
            async for chunk in resp.aiter_bytes():
                if skip:
                    drop = min(skip, len(chunk))
                    chunk, skip = chunk[drop:], skip - drop
                buf += chunk[: end - pos - len(buf)]
                if len(buf) >= _FLUSH or pos + len(buf) >= end:
                    await _write(fd, buf, pos, dl, part)
                    pos += len(buf)
                    buf = bytearray()
                    save()
                if pos >= end:
                    break
        finally:
            # Bytes received before a dropped connection are good: keep them so the retry
            # (or the next run, after a kill) starts after them.
            if buf:
                await _write(fd, buf, pos, dl, part)
                save(force=True)
    finally:
        await resp.aclose()


async def _write(fd: int, buf: bytearray, pos: int, dl: Download, part: Part) -> None:
    data = bytes(buf)
    try:
        await asyncio.to_thread(_pwrite_all, fd, data, pos)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorageError(
                f"no space left on device while downloading {dl.digest[7:19]}; the partial download "
                "is kept, free some space and pull again to resume") from None
        raise CorralError(f"cannot write {dl.digest[7:19]}: {exc.strerror}") from None
    part.completed += len(data)
    dl.completed += len(data)


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n

