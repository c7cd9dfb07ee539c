"""Pull: fetch a manifest, download missing blobs (shared, resumable), then write the manifest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator

import httpx

from corral.errors import (
    InsufficientStorageError,
    ModelNotFoundError,
    RegistryError,
    RegistryUnreachableError,
)
from corral.names import ModelName, parse_name
from corral.store import manifest as mf
from corral.store.default_model import DEFAULT_MODEL, ensure_default_model
from corral.store.download import Download, partial_progress, run_download
from corral.store.layout import StoreLayout
from corral.store.records import Progress
from corral.store.transfer import RegistryClient, TransferSettings

log = logging.getLogger("corral.store.pull")
EMBEDDED = parse_name(DEFAULT_MODEL)


async def pull(store: StoreLayout, name: str, *, insecure: bool = False,
               transfer: TransferSettings | None = None,
               downloads: dict[str, Download]) -> AsyncIterator[Progress]:
    """Pull ``name``; yields Ollama's ``/api/pull`` statuses in order.

    ``downloads`` (digest -> running download) is shared by every pull into this store, so two pulls
    that need one blob download it once.

    Raises:
        InvalidModelNameError, ModelNotFoundError (unknown in the registry), RegistryError (protocol,
        digest mismatch, retries exhausted), InsufficientStorageError (before or while downloading).
    """
    parsed = parse_name(name)
    settings = transfer or TransferSettings()
    yield Progress("pulling manifest")
    unreachable: RegistryUnreachableError | None = None
    try:
        async with RegistryClient(parsed, insecure=insecure, settings=settings) as client:
            try:
                data = await client.get_manifest()
            except RegistryUnreachableError as exc:
                if not parsed.matches(EMBEDDED):
                    raise
                unreachable = exc
            else:
                async for progress in _pull_layers(store, parsed, client, data, settings, downloads):
                    yield progress
        if unreachable is not None:
            # No network, but this model ships with corral: import it from the installed package.
            log.warning("%s; importing %s from its installed package", unreachable, DEFAULT_MODEL)
            yield Progress(f"{unreachable.message}: using {DEFAULT_MODEL} from the installed package")
            try:
                await asyncio.to_thread(ensure_default_model, store)
            except ModelNotFoundError as exc:  # the package is not installed either
                raise RegistryUnreachableError(f"{unreachable.message}; {exc.message}") from None
        yield Progress("success")
    except httpx.HTTPError as exc:  # DNS, refused, TLS, reset: the registry, not the request
        raise RegistryError(f"pull: cannot reach registry {parsed.host}: {exc}") from None


async def _pull_layers(store: StoreLayout, parsed: ModelName, client: RegistryClient, data: bytes,
                       settings: TransferSettings, downloads: dict[str, Download]) -> AsyncIterator[Progress]:
    """Download what the manifest ``data`` lists and is missing, then write the manifest."""
    manifest = mf.decode_manifest(data, source="registry manifest")
    await asyncio.to_thread(store.ensure_dirs)
    # compat(ollama): layers first, then the config; a digest listed twice is fetched and
    # verified once (never "cached" because an earlier entry claimed it, see issue #15485).
    layers: list[mf.Layer] = []
    for layer in [*manifest.layers, *([manifest.config] if manifest.config else [])]:
        if all(seen.digest != layer.digest for seen in layers):
            layers.append(layer)
        elif any(seen.digest == layer.digest and seen.size != layer.size for seen in layers):
            raise RegistryError(f"registry manifest lists {layer.digest} with two different sizes")
    old = _old_digests(store, parsed)
    with store.pinned(layer.digest for layer in layers):
        cached = {layer.digest: await asyncio.to_thread(_cached, store, layer) for layer in layers}
        missing = [layer for layer in layers if not cached[layer.digest]]
        await asyncio.to_thread(_check_space, store, missing, settings)
        mine = [_acquire(store, downloads, client, layer, settings) for layer in missing]
        try:
            for layer in layers:
                status = f"pulling {layer.digest[7:19]}"
                if cached[layer.digest]:
                    yield Progress(status, layer.digest, layer.size, layer.size)
                    continue
                dl = next(d for d in mine if d.digest == layer.digest)
                last = -1
                while not dl.task.done():
                    if dl.completed != last:
                        last = dl.completed
                        yield Progress(status, layer.digest, layer.size, last)
                    await asyncio.wait({dl.task}, timeout=settings.progress_interval)
                dl.task.result()  # re-raises the download's error
                yield Progress(status, layer.digest, layer.size, layer.size)
        finally:
            for dl in mine:
                _release(downloads, dl)
        yield Progress("verifying sha256 digest")
        yield Progress("writing manifest")
        await asyncio.to_thread(store.write_manifest, parsed, data)
        unused = old - manifest.digests()
        if unused and not store.noprune:
            yield Progress("removing unused layers")
            await asyncio.to_thread(store.remove_unused, unused)


def _old_digests(store: StoreLayout, name: ModelName) -> set[str]:
    path = store.find_manifest(name)
    if path is None:
        return set()
    try:
        return store.read_manifest(path)[0].digests()
    except Exception:  # an unreadable old manifest is simply replaced
        return set()


def _cached(store: StoreLayout, layer: mf.Layer) -> bool:
    """A blob counts as present only at the manifest's size; a damaged one is removed."""
    path = store.blob_path(layer.digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == layer.size:
        return True
    log.warning("blob %s has %d bytes, expected %d; downloading it again", layer.digest, size, layer.size)
    path.unlink(missing_ok=True)
    return False


def _check_space(store: StoreLayout, missing: list[mf.Layer], settings: TransferSettings) -> None:
    need = sum(max(0, layer.size - partial_progress(store, layer.digest, layer.size)) for layer in missing)
    free = shutil.disk_usage(store.blobs_dir).free
    if need + settings.disk_margin > free:
        raise InsufficientStorageError(
            f"not enough free disk space to pull: need {need / 1e9:.2f} GB, "
            f"{max(0, free - settings.disk_margin) / 1e9:.2f} GB available")


def _acquire(store: StoreLayout, downloads: dict[str, Download], client: RegistryClient, layer: mf.Layer,
             settings: TransferSettings) -> Download:
    """Join the running download of this digest, or start one (one download per blob)."""
    dl = downloads.get(layer.digest)
    if dl is None or dl.task.done():
        dl = Download(layer.digest, layer.size)
        # The download owns its own client so it outlives the pull that started it while others wait.
        dl.task = asyncio.get_running_loop().create_task(
            run_download(store, dl, client.name, insecure=client.insecure, token=client.token,
                         settings=settings))
        downloads[layer.digest] = dl
    dl.waiters += 1
    return dl


def _release(downloads: dict[str, Download], dl: Download) -> None:
    dl.waiters -= 1
    if dl.waiters <= 0:
        if not dl.task.done():
            dl.task.cancel()  # last waiter gone: stop, keeping the partial for resume
        elif not dl.task.cancelled():
            dl.task.exception()  # mark it retrieved: the pull already reported the first error
        with contextlib.suppress(KeyError):
            if downloads[dl.digest] is dl:
                del downloads[dl.digest]
