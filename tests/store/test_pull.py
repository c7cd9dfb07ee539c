"""Pull against the in-process registry: progress, reuse, sharing, and every injected fault."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from corral.errors import (
    InsufficientStorageError,
    InvalidRequestError,
    ModelNotFoundError,
    RegistryError,
)
from corral.store import Store
from corral.store import manifest as mf
from corral.testing.registry import TestRegistry

from .conftest import collect, statuses

BLOB = os.urandom(200 * 1024)  # 4 parts of 50 KiB with FAST settings


def publish(registry: TestRegistry, name: str = "library/tiny:latest", blob: bytes = BLOB) -> bytes:
    return registry.add_model(name, [(mf.MODEL, blob), (mf.TEMPLATE, b"{{ .Prompt }}"),
                                     (mf.PARAMS, json.dumps({"stop": ["x"]}).encode())])


def model_digest(manifest: bytes) -> str:
    return json.loads(manifest)["layers"][0]["digest"]


def no_files_outside(root: Path, store: Store) -> None:
    """Everything under ``root`` besides the registry's own dir and the canary is in the store."""
    for path in root.rglob("*"):
        if path.is_file() and "registry" not in path.parts and path.name != "canary":
            assert path.is_relative_to(store.root), path


def test_pull_statuses_and_layout(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    progress = collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    d = model_digest(manifest)
    assert statuses(progress) == ["pulling manifest", f"pulling {d[7:19]}", *[
        f"pulling {layer['digest'][7:19]}" for layer in json.loads(manifest)["layers"][1:]],
        f"pulling {json.loads(manifest)['config']['digest'][7:19]}",
        "verifying sha256 digest", "writing manifest", "success"]
    last = [p for p in progress if p.digest == d][-1]
    assert (last.total, last.completed) == (len(BLOB), len(BLOB))
    assert store.blob_path(d).read_bytes() == BLOB
    path = store.root / "manifests" / registry.host / "library" / "tiny" / "latest"
    assert path.read_bytes() == manifest  # stored as the raw bytes received
    rec = store.get(f"{registry.host}/library/tiny:latest")
    assert rec.template == "{{ .Prompt }}" and rec.params == {"stop": ["x"]}
    assert rec.display == f"{registry.host}/library/tiny:latest"
    # Parts were fetched with Range requests, each byte once.
    gets = registry.requests("GET", d)
    assert len(gets) == 4 and sum(a.sent for a in gets) == len(BLOB)
    assert all(a.range is not None for a in gets)
    assert not list((store.blobs_dir / ".corral-tmp").iterdir())


def test_pull_reuses_present_blobs(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    name = f"{registry.host}/library/tiny"
    collect(store.pull(name, insecure=True))
    n = len(registry.requests("GET"))
    progress = collect(store.pull(name, insecure=True))
    assert len(registry.requests("GET")) == n + 1  # only the manifest again
    d = model_digest(manifest)
    assert [(p.total, p.completed) for p in progress if p.digest == d] == [(len(BLOB), len(BLOB))]


def test_http_needs_insecure(store: Store, registry: TestRegistry) -> None:
    publish(registry)
    with pytest.raises(InvalidRequestError, match="insecure"):
        collect(store.pull(f"http://{registry.host}/library/tiny"))


def test_unknown_model(store: Store, registry: TestRegistry) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        collect(store.pull(f"{registry.host}/library/nope", insecure=True))


def test_a_client_resetting_its_connection_prints_nothing(registry: TestRegistry,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A client that hangs up mid-request (an HTTP pool closing an idle connection) is routine: a
    # traceback on stderr would land in whatever test captures stderr next (the CLI runner's).
    sock = socket.create_connection(("127.0.0.1", registry.port))
    sock.sendall(b"GET /v2/ HTTP/1.1\r\n")  # no end of headers: the server is still reading
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    sock.close()
    time.sleep(0.3)
    assert "Traceback" not in capsys.readouterr().err


def test_invalid_name_touches_nothing(store: Store, registry: TestRegistry) -> None:
    with pytest.raises(InvalidRequestError, match="invalid model name"):
        collect(store.pull("../../etc/passwd", insecure=True))
    assert not store.root.exists() and registry.log == []


def test_dropped_connection_resumes_the_part(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    registry.faults.drop_after[d] = 5000
    registry.faults.drop_times = 2
    collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert store.blob_path(d).read_bytes() == BLOB
    gets = registry.requests("GET", d)
    assert len(gets) == 6  # 4 parts + 2 retries
    # The retries continued from where the dropped responses stopped.
    dropped = [a for a in gets if not a.complete]
    assert len(dropped) == 2
    for a in dropped:
        assert any(b.range and b.range[0] == a.range[0] + a.sent for b in gets)
    assert sum(a.sent for a in gets) == len(BLOB)


def test_server_errors_then_success(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    registry.faults.server_errors = {"manifest": 2, d: 3}
    collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert store.blob_path(d).read_bytes() == BLOB


def test_server_errors_forever_give_a_clear_error(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    registry.faults.server_errors = {d: 1000}
    with pytest.raises(RegistryError, match="failed after 3 retries"):
        collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert not store.blob_path(d).exists()
    assert store._downloads == {}
    # The partial is kept for resume; the next pull finishes it once the registry recovers.
    registry.faults.server_errors = {}
    collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert store.blob_path(d).read_bytes() == BLOB


def test_wrong_bytes_are_never_committed(store: Store, registry: TestRegistry, tmp_path: Path) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    registry.faults.wrong_bytes.add(d)
    with pytest.raises(RegistryError, match="digest mismatch"):
        collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert not store.blob_path(d).exists()
    assert not (store.root / "manifests" / registry.host).exists()
    assert not list((store.blobs_dir / ".corral-tmp").glob(f"*{d[7:]}*"))
    assert len(registry.requests("GET", d)) == 8  # one clean retry of every part
    no_files_outside(tmp_path, store)


def test_duplicate_digest_with_bad_bytes_is_verified(store: Store, registry: TestRegistry) -> None:
    # Issue #15485: a config that equals a layer must not let the layer skip verification.
    d, n = registry.add_blob(BLOB)
    registry.faults.wrong_bytes.add(d)
    layer = {"mediaType": mf.MODEL, "digest": d, "size": n}
    registry.faults.manifests["library/dup:latest"] = json.dumps(
        {"schemaVersion": 2, "mediaType": mf.MANIFEST_MEDIA_TYPE,
         "config": {"mediaType": mf.CONFIG_MEDIA_TYPE, "digest": d, "size": n}, "layers": [layer]}).encode()
    with pytest.raises(RegistryError, match="digest mismatch"):
        collect(store.pull(f"{registry.host}/library/dup", insecure=True))
    assert not store.blob_path(d).exists()


def test_slow_parts_and_a_stall(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    registry.faults.stall[d] = 2.5  # longer than the 1 s stall timeout: that part is retried
    collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert store.blob_path(d).read_bytes() == BLOB
    assert len(registry.requests("GET", d)) == 5


def test_registry_ignoring_range(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    registry.faults.ignore_range = True
    collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert store.blob_path(model_digest(manifest)).read_bytes() == BLOB


@pytest.mark.parametrize("digest", [
    "sha256:../../../../etc/passwd", "../../etc/passwd", "sha256:" + "a" * 63, "sha256:" + "A" * 64,
    "sha256-" + "a" * 64, "sha256:" + "a" * 64 + "/../../x", "md5:abc",
])
def test_hostile_manifest_digests(store: Store, registry: TestRegistry, tmp_path: Path, digest: str) -> None:
    canary = tmp_path / "canary"
    canary.write_text("keep me")
    registry.faults.manifests["library/evil:latest"] = json.dumps(
        {"schemaVersion": 2, "mediaType": mf.MANIFEST_MEDIA_TYPE,
         "config": {"mediaType": mf.CONFIG_MEDIA_TYPE, "digest": "sha256:" + "0" * 64, "size": 2},
         "layers": [{"mediaType": mf.MODEL, "digest": digest, "size": 7}]}).encode()
    with pytest.raises(RegistryError, match="invalid layer digest"):
        collect(store.pull(f"{registry.host}/library/evil", insecure=True))
    assert canary.read_text() == "keep me"
    assert len(registry.log) == 1  # the manifest only: no blob was requested
    no_files_outside(tmp_path, store)


@pytest.mark.parametrize("body", [
    b"{", b"[]", b'{"schemaVersion":2,"layers":[]}', b"x" * (5 * 1024 * 1024),
    json.dumps({"schemaVersion": 2, "layers": [{"mediaType": mf.MODEL, "digest": "sha256:" + "1" * 64,
                                                "size": -1}]}).encode(),
    json.dumps({"schemaVersion": 2, "layers": [{"mediaType": mf.MODEL, "digest": "sha256:" + "1" * 64,
                                                "size": 1}] * 1001}).encode(),
])
def test_bad_manifests(store: Store, registry: TestRegistry, body: bytes) -> None:
    registry.faults.manifests["library/bad:latest"] = body
    with pytest.raises(RegistryError):
        collect(store.pull(f"{registry.host}/library/bad", insecure=True))


def test_auth_challenge_on_same_host(store: Store, registry: TestRegistry) -> None:
    publish(registry)
    registry.faults.auth_realm = f"{registry.url}/token"
    collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    blob_gets = [a for a in registry.requests("GET") if "/blobs/" in a.path]
    assert blob_gets and all(a.authorization == f"Bearer {registry.TOKEN}" for a in blob_gets)


def test_auth_challenge_pointing_at_another_host(store: Store, registry: TestRegistry,
                                                 tmp_path: Path) -> None:
    publish(registry)
    with TestRegistry(tmp_path / "evil") as evil:
        registry.faults.auth_realm = f"{evil.url}/token"
        with pytest.raises(RegistryError, match="another host"):
            collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
        assert evil.log == []  # nothing, credentials or otherwise, reached the other host


def test_free_disk_checked_before_downloading(store: Store, registry: TestRegistry,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    publish(registry)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(InsufficientStorageError, match="not enough free disk space"):
        collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert [a for a in registry.log if "/blobs/" in a.path] == []


def test_two_pulls_share_one_download(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    registry.faults.bytes_per_second = 400_000  # slow enough that both pulls overlap
    name = f"{registry.host}/library/tiny"

    async def both() -> None:
        await asyncio.gather(*[_drain(store.pull(name, insecure=True)) for _ in range(3)])

    asyncio.run(both())
    assert sum(a.sent for a in registry.requests("GET", d)) == len(BLOB)
    assert store.blob_path(d).read_bytes() == BLOB


def test_cancelling_one_waiter_keeps_the_download(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    registry.faults.bytes_per_second = 400_000
    name = f"{registry.host}/library/tiny"

    async def scenario() -> None:
        keep = asyncio.ensure_future(_drain(store.pull(name, insecure=True)))
        drop = asyncio.ensure_future(_drain(store.pull(name, insecure=True)))
        await asyncio.sleep(0.2)
        drop.cancel()
        await keep

    asyncio.run(scenario())
    assert store.blob_path(d).read_bytes() == BLOB


async def _drain(agen) -> None:  # type: ignore[no-untyped-def]
    async for _ in agen:
        pass


def test_corrupt_cached_blob_is_fetched_again(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    d = model_digest(manifest)
    name = f"{registry.host}/library/tiny"
    collect(store.pull(name, insecure=True))
    store.blob_path(d).write_bytes(b"")  # issue #9846: an empty blob at the trusted path
    collect(store.pull(name, insecure=True))
    assert store.blob_path(d).read_bytes() == BLOB


def test_repull_of_changed_tag_removes_unused_layers(store: Store, registry: TestRegistry) -> None:
    first = publish(registry)
    name = f"{registry.host}/library/tiny"
    collect(store.pull(name, insecure=True))
    publish(registry, blob=os.urandom(1000))
    progress = collect(store.pull(name, insecure=True))
    assert "removing unused layers" in statuses(progress)
    assert not store.blob_path(model_digest(first)).exists()


def test_redirect_to_a_cdn_drops_credentials(store: Store, registry: TestRegistry, tmp_path: Path) -> None:
    manifest = publish(registry)
    with TestRegistry(tmp_path / "cdn") as cdn:
        for layer in [*json.loads(manifest)["layers"], json.loads(manifest)["config"]]:
            cdn.add_blob_file(registry.blob_file(layer["digest"]))
        registry.faults.auth_realm = f"{registry.url}/token"
        registry.faults.redirect_blobs = cdn.url
        collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
        assert store.blob_path(model_digest(manifest)).read_bytes() == BLOB
        assert cdn.requests("GET") and all(a.authorization is None for a in cdn.log)


def test_gzip_bomb_manifest_is_bounded(store: Store, registry: TestRegistry) -> None:
    registry.faults.manifests["library/bomb:latest"] = b" " * (16 * 1024 * 1024)  # ~16 KiB gzipped
    registry.faults.gzip_manifests = True
    with pytest.raises(RegistryError, match="manifest is larger than"):
        collect(store.pull(f"{registry.host}/library/bomb", insecure=True))


def test_hf_names_use_the_same_protocol() -> None:
    from corral.names import parse_name
    from corral.store.transfer import RegistryClient, TransferSettings

    client = RegistryClient(parse_name("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"), insecure=False,
                            settings=TransferSettings())
    assert client.url("manifests", "Q4_K_M") == \
        "https://hf.co/v2/bartowski/Llama-3.2-1B-Instruct-GGUF/manifests/Q4_K_M"
    asyncio.run(client.http.aclose())


def test_disk_full_mid_download_keeps_the_partial(store: Store, registry: TestRegistry,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from corral.store import download

    manifest = publish(registry)
    d = model_digest(manifest)
    real = download._pwrite_all
    calls = [0]

    def full_disk(fd: int, data: bytes, pos: int) -> None:
        if len(data) > 1000:  # only the model's parts (the small blobs download meanwhile)
            calls[0] += 1
            if calls[0] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, pos)

    monkeypatch.setattr(download, "_pwrite_all", full_disk)
    with pytest.raises(InsufficientStorageError, match="no space left on device"):
        collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert store._downloads == {} and not store.blob_path(d).exists()
    assert list((store.blobs_dir / ".corral-tmp").glob("*.partial"))  # kept for resume
    monkeypatch.setattr(download, "_pwrite_all", real)
    mark = len(registry.log)
    collect(store.pull(f"{registry.host}/library/tiny", insecure=True))  # no restart needed
    assert store.blob_path(d).read_bytes() == BLOB
    assert sum(a.sent for a in registry.log[mark:] if a.path.endswith(d)) < len(BLOB)


def test_redirect_loop_is_bounded(store: Store, registry: TestRegistry) -> None:
    manifest = publish(registry)
    registry.faults.redirect_blobs = registry.url  # every blob GET redirects to itself
    with pytest.raises(RegistryError, match="redirected more than 5 times"):
        collect(store.pull(f"{registry.host}/library/tiny", insecure=True))
    assert not store.blob_path(model_digest(manifest)).exists()
