"""The store's files on disk: where manifests and blobs live, reading models back, pins and pruning.

Every module of ``corral.store`` that touches the disk goes through a ``StoreLayout``; the ``Store``
is a layout plus the operations (create, pull, push, show, GC, the embedded default model).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from corral.conversation import Message
from corral.errors import InvalidModelNameError, ModelNotFoundError, RegistryError
from corral.names import ModelName, parse_name
from corral.store import blobs as _blobs
from corral.store import manifest as mf
from corral.store.records import ModelRecord

log = logging.getLogger("corral.store")

MAX_TEXT_LAYER = 16 * 1024 * 1024


class StoreLayout:
    """Manifests and blobs under ``root``, laid out byte-for-byte as Ollama lays them out.

    Args:
        root: holds ``manifests/`` and ``blobs/``.
        noprune: keep unreferenced blobs (``CORRAL_NOPRUNE``): ``remove_unused`` does nothing.
    """

    def __init__(self, root: Path, *, noprune: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.noprune = noprune
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"
        self.lock_dir = self.blobs_dir / _blobs.LOCK_DIR
        self._pins: Counter[str] = Counter()
        self._active_path = self.lock_dir / f"active-{uuid.uuid4().hex}.lock"
        self._active = 0
        self._active_fd: int | None = None
        self._mutex = threading.Lock()

    def ensure_dirs(self) -> None:
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)


    def blob_path(self, digest: str) -> Path:
        """The ONE validating path builder: ``blobs/sha256-<hex>`` for ``sha256:<hex>``."""
        return _blobs.blob_path(self.blobs_dir, digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()


    # ---- names and manifests ---------------------------------------------------------------------
    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.parts)

    def find_manifest(self, name: ModelName) -> Path | None:
        """The existing manifest for ``name``, matching each part case-insensitively."""
        exact = self.manifest_path(name)
        if exact.is_file():
            return exact
        here = self.manifests_dir
        for part in name.parts:
            try:
                match = next((p for p in here.iterdir() if p.name.lower() == part.lower()), None)
            except OSError:
                return None
            if match is None:
                return None
            here = match
        return here if here.is_file() else None

    def name_of(self, path: Path) -> ModelName | None:
        rel = path.relative_to(self.manifests_dir).parts
        if len(rel) != 4:
            return None
        try:
            return parse_name(f"{rel[0]}/{rel[1]}/{rel[2]}:{rel[3]}")
        except InvalidModelNameError:
            return None

    def manifest_files(self) -> list[tuple[ModelName, Path]]:
        out: list[tuple[ModelName, Path]] = []
        if not self.manifests_dir.is_dir():
            return out
        for path in self.manifests_dir.glob("*/*/*/*"):
            if path.is_file():
                name = self.name_of(path)
                if name is not None:
                    out.append((name, path))
        return out

    def read_manifest(self, path: Path) -> tuple[mf.Manifest, bytes]:
        data = path.read_bytes()
        return mf.decode_manifest(data, source=f"manifest {path.relative_to(self.manifests_dir)}"), data

    def write_manifest(self, name: ModelName, manifest: mf.Manifest | bytes) -> Path:
        """Write atomically, only after every referenced blob is present."""
        data = manifest if isinstance(manifest, bytes) else mf.encode_manifest(manifest)
        m = mf.decode_manifest(data)
        missing = [d for d in m.digests() if not self.has_blob(d)]
        if missing:
            raise RegistryError(f"cannot write manifest: blob {missing[0]} is missing")
        path = self.find_manifest(name) or self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _blobs.write_atomic(path, data)
        return path


    def get(self, name: str | ModelName) -> ModelRecord:
        """The record of the stored model ``name`` (matched case-insensitively).

        Raises:
            InvalidModelNameError: before anything touches the disk.
            ModelNotFoundError: ``model "x" not found, try pulling it first`` (or damaged).
        """
        parsed = parse_name(name) if isinstance(name, str) else name
        path = self.find_manifest(parsed)
        if path is None:
            raise ModelNotFoundError(f'model "{parsed.display}" not found, try pulling it first')
        try:
            return self.read_record(self.name_of(path) or parsed, path)
        except RegistryError as exc:
            raise ModelNotFoundError(
                f'model "{parsed.display}" is damaged ({exc}); pull or create it again') from None

    def read_record(self, name: ModelName, path: Path) -> ModelRecord:
        manifest, data = self.read_manifest(path)
        rec = ModelRecord(
            name=name, display=name.display, digest=mf.manifest_digest(data),
            modified_at=dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc),
            size=manifest.total_size, manifest=manifest,
        )
        if manifest.config is not None:
            cfg = self.read_json(manifest.config.digest, dict)
            rec.config = cfg if isinstance(cfg, dict) else {}
        for layer in manifest.layers:
            t, path_ = layer.media_type, self.blob_path(layer.digest)
            if t == mf.MODEL:
                if rec.model_path is None:
                    rec.model_path = path_ if path_.is_file() else None
                    rec.model_digest = layer.digest
            elif t == mf.ADAPTER:
                rec.adapters.append(path_)
            elif t == mf.PROJECTOR:
                rec.projector = path_
            elif t == mf.DRAFT:
                rec.draft = path_
            elif t in (mf.TEMPLATE, mf.PROMPT):
                rec.template = self.read_text(layer.digest)
            elif t == mf.SYSTEM:
                rec.system = self.read_text(layer.digest)
            elif t == mf.PARAMS:
                params = self.read_json(layer.digest, dict)
                rec.params = params if isinstance(params, dict) else {}
            elif t == mf.MESSAGES:
                msgs = self.read_json(layer.digest, list)
                rec.messages = _messages(msgs if isinstance(msgs, list) else [])
            elif t == mf.LICENSE:
                text = self.read_text(layer.digest)
                if text is not None:
                    rec.license.append(text)
        return rec

    def read_text(self, digest: str) -> str | None:
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                return f.read(MAX_TEXT_LAYER).decode("utf-8", errors="replace")
        except OSError:
            log.warning("blob %s is missing", digest)
            return None

    def read_json(self, digest: str, kind: type) -> Any:
        text = self.read_text(digest)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            log.warning("blob %s is not valid JSON", digest)
            return None
        return value if isinstance(value, kind) else None


    @contextlib.contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Protect ``digests`` from GC and from delete's layer removal while the block runs."""
        ds = list(digests)
        with self._mutex:
            self._pins.update(ds)
        try:
            with self.activity():
                yield
        finally:
            with self._mutex:
                self._pins.subtract(ds)
                self._pins = +self._pins  # drop zero counts

    @contextlib.contextmanager
    def activity(self) -> Iterator[None]:
        """Mark this Store busy: a GC in any other process or Store skips its sweep meanwhile.

        While busy, the Store holds an exclusive flock on its own ``active-<id>.lock``; GC probes
        the other such files. Registering waits for a running sweep (shared lock on gc.lock), so
        a sweep never overlaps an operation that started after it checked.
        """
        self.ensure_dirs()
        with self._mutex:
            if self._active == 0:
                with _blobs.file_lock(self.lock_dir / "gc.lock", shared=True):
                    self.lock_dir.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self._active_path, os.O_RDWR | os.O_CREAT, 0o644)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    self._active_fd = fd
            self._active += 1
        try:
            yield
        finally:
            with self._mutex:
                self._active -= 1
                if self._active == 0 and self._active_fd is not None:
                    self._active_path.unlink(missing_ok=True)
                    os.close(self._active_fd)  # closing releases the flock
                    self._active_fd = None

    def pinned_digests(self) -> set[str]:
        with self._mutex:
            return set(self._pins)

    def others_active(self) -> bool:
        """True when another process (or Store) holds its active lock; stale files are removed."""
        for path in self.lock_dir.glob("active-*.lock"):
            if path == self._active_path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            finally:
                os.close(fd)
            path.unlink(missing_ok=True)  # its owner died without cleaning up
        return False


    def remove_unused(self, digests: set[str]) -> list[str]:
        """Remove those of ``digests`` that no manifest and no running operation here uses.

        Does nothing with ``noprune`` or when any manifest is unreadable. (A pull in another
        process that counted on one of these blobs fails at ``write_manifest``, which refuses a
        manifest whose blobs are missing, so the store stays consistent.) Returns what it removed.
        """
        if self.noprune or not digests:
            return []
        used = self.referenced()
        if used is None:
            return []
        gone = sorted(digests - used - self.pinned_digests())
        for d in gone:
            self.blob_path(d).unlink(missing_ok=True)
        return gone

    def prune_dirs(self, start: Path) -> None:
        here = start
        while here != self.manifests_dir and here.is_relative_to(self.manifests_dir):
            try:
                here.rmdir()
            except OSError:
                return
            here = here.parent

    def referenced(self) -> set[str] | None:
        """Every digest any manifest uses, or None when some manifest cannot be parsed."""
        used: set[str] = set()
        for name, path in self.manifest_files():
            try:
                manifest, _ = self.read_manifest(path)
            except (RegistryError, OSError) as exc:
                log.warning("not pruning: manifest of %s is unreadable (%s)", name.display, exc)
                return None
            used |= manifest.digests()
        return used


def _messages(items: list[Any]) -> list[Message]:
    out = []
    for item in items:
        try:
            out.append(msgspec.convert(item, Message))
        except (msgspec.ValidationError, TypeError):
            log.warning("skipping an invalid message in a messages layer")
    return out
