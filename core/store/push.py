"""Push: send a model's blobs (skipping those the registry has) and then its manifest."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from corral.errors import RegistryError
from corral.names import parse_name
from corral.store import manifest as mf
from corral.store.layout import StoreLayout
from corral.store.records import Progress
from corral.store.transfer import RegistryClient, TransferSettings, raise_for_status


async def push(store: StoreLayout, name: str, *, insecure: bool = False,
               transfer: TransferSettings | None = None) -> AsyncIterator[Progress]:
    """Push ``name`` to the registry its name points at; yields Ollama's ``/api/push`` statuses.

    Raises:
        InvalidModelNameError, ModelNotFoundError, RegistryError.
    """
    parsed = parse_name(name)
    settings = transfer or TransferSettings()
    yield Progress("retrieving manifest")
    record = await asyncio.to_thread(store.get, parsed)
    path = await asyncio.to_thread(store.find_manifest, record.name)
    if path is None:
        raise RegistryError(f'model "{parsed.display}" disappeared while pushing')
    data = await asyncio.to_thread(path.read_bytes)
    manifest = mf.decode_manifest(data)
    try:
        async with RegistryClient(parsed, insecure=insecure, settings=settings) as client:
            with store.pinned(manifest.digests()):
                seen: set[str] = set()
                for layer in [*manifest.layers, *([manifest.config] if manifest.config else [])]:
                    if layer.digest in seen:
                        continue
                    seen.add(layer.digest)
                    status = f"pushing {layer.digest[7:19]}"
                    yield Progress(status, layer.digest, layer.size, 0)
                    if not await _exists(client, layer.digest):
                        blob = store.blob_path(layer.digest)
                        async for done in _upload(client, blob, layer.digest, settings):
                            yield Progress(status, layer.digest, layer.size, done)
                    yield Progress(status, layer.digest, layer.size, layer.size)
            yield Progress("pushing manifest")
            resp = await client.send("PUT", client.url("manifests", parsed.tag), content=data,
                                     headers={"Content-Type": mf.MANIFEST_MEDIA_TYPE})
            try:
                await raise_for_status(resp, "push manifest")
            finally:
                await resp.aclose()
        yield Progress("success")
    except httpx.HTTPError as exc:  # DNS, refused, TLS, reset: the registry, not the request
        raise RegistryError(f"push: cannot reach registry {parsed.host}: {exc}") from None


async def _exists(client: RegistryClient, digest: str) -> bool:
    resp = await client.send("HEAD", client.url("blobs", digest))
    await resp.aclose()
    if resp.status_code == 200:
        return True
    if resp.status_code == 404:
        return False
    raise RegistryError(f"checking blob {digest[7:19]}: registry answered {resp.status_code}")


async def _upload(client: RegistryClient, path: Path, digest: str,
                  settings: TransferSettings) -> AsyncIterator[int]:
    """POST an upload session, PATCH the bytes (streamed from disk), PUT ``?digest=``."""
    resp = await client.send("POST", client.url("blobs", "uploads/"))
    try:
        await raise_for_status(resp, f"starting upload of {digest[7:19]}")
        location = resp.headers.get("location") or resp.headers.get("docker-upload-location")
    finally:
        await resp.aclose()
    if resp.status_code == 201:
        return  # the registry mounted it from elsewhere
    if not location:
        raise RegistryError("registry started an upload without a Location")
    url = urllib.parse.urljoin(client.base + "/", location)
    size = path.stat().st_size
    sent = [0]

    async def body() -> AsyncIterator[bytes]:
        with open(path, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, settings.upload_chunk):
                sent[0] += len(chunk)
                yield chunk

    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size),
               "Content-Range": f"0-{max(0, size - 1)}"}
    task = asyncio.ensure_future(client.send("PATCH", url, headers=headers, content=body()))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=settings.progress_interval)
            yield sent[0]
    finally:
        if not task.done():
            task.cancel()
    resp = task.result()
    try:
        await raise_for_status(resp, f"uploading {digest[7:19]}")
        location = resp.headers.get("location") or location
    finally:
        await resp.aclose()
    url = urllib.parse.urljoin(url, location)
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    resp = await client.send("PUT", f"{url}{sep}digest={urllib.parse.quote(digest)}")
    try:
        await raise_for_status(resp, f"finishing upload of {digest[7:19]}")
    finally:
        await resp.aclose()
