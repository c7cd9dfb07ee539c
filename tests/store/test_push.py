"""Push to the in-process registry, and the create → push → rm → pull round trip."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from corral.errors import ModelNotFoundError, RegistryError
from corral.store import CreateSpec, Store
from corral.store.blobs import sha256_file
from corral.testing.registry import TestRegistry

from .conftest import collect, statuses


def upload(store: Store, path: Path) -> str:
    digest, _ = sha256_file(path)

    async def chunks():  # type: ignore[no-untyped-def]
        yield path.read_bytes()

    asyncio.run(store.put_blob(digest, chunks()))
    return digest


def test_round_trip_keeps_every_digest(store: Store, registry: TestRegistry, tiny_gguf: Path) -> None:
    digest = upload(store, tiny_gguf)
    name = f"{registry.host}/library/tiny:v1"
    list(store.create(name, CreateSpec(files={"tiny.gguf": digest}, system="be brief",
                                       parameters={"temperature": 0.5, "stop": ["<|im_end|>"]})))
    before = store.get(name)
    progress = collect(store.push(name, insecure=True))
    layer_status = [f"pushing {layer.digest[7:19]}" for layer in before.manifest.all_layers()]
    assert statuses(progress)[0] == "retrieving manifest"
    assert statuses(progress)[-2:] == ["pushing manifest", "success"]
    assert set(statuses(progress)[1:-2]) == set(layer_status)
    assert registry.manifests["library/tiny:v1"] == (store.manifest_path(before.name)).read_bytes()
    assert {a.method for a in registry.log} >= {"HEAD", "POST", "PATCH", "PUT"}
    store.delete(name)
    assert not store.blob_path(digest).exists()  # rm removed the now-unused layers
    collect(store.pull(name, insecure=True))
    after = store.get(name)
    assert after.digest == before.digest
    assert [layer.digest for layer in after.manifest.all_layers()] == [
        layer.digest for layer in before.manifest.all_layers()]
    assert sha256_file(store.blob_path(digest))[0] == digest
    assert after.system == "be brief" and after.params == before.params


def test_second_push_skips_present_blobs(store: Store, registry: TestRegistry, tiny_gguf: Path) -> None:
    digest = upload(store, tiny_gguf)
    name = f"{registry.host}/me/tiny:v1"
    list(store.create(name, CreateSpec(files={"tiny.gguf": digest})))
    collect(store.push(name, insecure=True))
    mark = len(registry.log)
    collect(store.push(name, insecure=True))
    assert {a.method for a in registry.log[mark:]} == {"HEAD", "PUT"}  # existence checks + manifest


def test_push_unknown_model(store: Store, registry: TestRegistry) -> None:
    with pytest.raises(ModelNotFoundError):
        collect(store.push(f"{registry.host}/library/none:v1", insecure=True))


def test_push_refused_by_registry(store: Store, registry: TestRegistry, tiny_gguf: Path) -> None:
    digest = upload(store, tiny_gguf)
    name = f"{registry.host}/library/tiny:v1"
    list(store.create(name, CreateSpec(files={"tiny.gguf": digest})))
    registry.faults.auth_realm = "http://127.0.0.2:9/evil"
    with pytest.raises(RegistryError, match="another host"):
        collect(store.push(name, insecure=True))
    assert "library/tiny:v1" not in registry.manifests
    assert json.loads(store.manifest_path(store.get(name).name).read_bytes())["schemaVersion"] == 2
