"""create: from uploaded GGUF blobs, from an existing model, with quantize; and its validation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from corral.conversation import Message
from corral.errors import (
    InvalidModelFileError,
    InvalidModelNameError,
    InvalidRequestError,
    ModelNotFoundError,
)
from corral.store import CreateSpec, Store
from corral.store import manifest as mf
from corral.store.blobs import sha256_file

from .conftest import statuses


def upload(store: Store, data: bytes) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def chunks():  # type: ignore[no-untyped-def]
        yield data

    asyncio.run(store.put_blob(digest, chunks()))
    return digest


@pytest.fixture
def base(store: Store, tiny_gguf: Path) -> str:
    digest = upload(store, tiny_gguf.read_bytes())
    spec = CreateSpec(files={"tiny.gguf": digest}, template="{{ .Prompt }}", system="sys",
                      parameters={"temperature": 0.5, "stop": ["a", "b"]}, license="MIT",
                      messages=[Message(role="user", content="hi")])
    progress = list(store.create("base:1", spec))
    assert statuses(progress)[0] == "parsing GGUF"
    assert statuses(progress)[-2:] == ["writing manifest", "success"]
    assert progress[1].status == f"using existing layer {digest}"  # the uploaded model blob
    assert all(p.status.startswith("creating new layer sha256:") for p in progress[2:-2])
    return digest


def test_create_from_gguf_blob(store: Store, base: str, tiny_gguf: Path) -> None:
    rec = store.get("base:1")
    assert rec.model_path == store.blob_path(base) and rec.model_digest == base
    assert rec.template == "{{ .Prompt }}" and rec.system == "sys" and rec.license == ["MIT"]
    assert rec.params == {"temperature": 0.5, "stop": ["a", "b"]}
    assert [(m.role, m.content) for m in rec.messages] == [("user", "hi")]
    assert [layer.media_type for layer in rec.manifest.layers] == [
        mf.MODEL, mf.TEMPLATE, mf.SYSTEM, mf.LICENSE, mf.PARAMS, mf.MESSAGES]
    assert rec.config["model_family"] == "llama" and rec.config["file_type"] == "F32"
    assert rec.config["rootfs"]["diff_ids"] == [layer.digest for layer in rec.manifest.layers]
    assert rec.details.parameter_size == rec.config["model_type"]
    assert rec.size == sum(layer.size for layer in rec.manifest.all_layers())
    assert sha256_file(store.manifest_path(rec.name))[0][7:] == rec.digest


def test_create_again_reuses_layers(store: Store, base: str) -> None:
    progress = list(store.create("base:2", CreateSpec(files={"x.gguf": base}, system="sys")))
    assert any(p.status == f"using existing layer {base}" for p in progress)


def test_create_from_model_merges(store: Store, base: str) -> None:
    list(store.create("child", CreateSpec(from_="BASE:1", system="new", parameters={"stop": ["c"]})))
    rec = store.get("child")
    assert rec.system == "new" and rec.template == "{{ .Prompt }}" and rec.license == ["MIT"]
    assert rec.params == {"temperature": 0.5, "stop": ["c"]}  # new keys win, lists replaced
    assert rec.model_digest == base
    assert rec.manifest.layers[0].from_ == "registry.ollama.ai/library/base:1"
    info = store.show("child")
    assert info.details.parent_model == "registry.ollama.ai/library/base:1"
    assert rec.details.parent_model == "registry.ollama.ai/library/base:1"


def test_renderer_parser_and_requires_live_in_the_config_blob(store: Store, base: str) -> None:
    spec = CreateSpec(from_="base:1", renderer="qwen3-coder", parser="qwen3-coder", requires="v0.14.0")
    list(store.create("coder", spec))
    rec = store.get("coder")
    # compat(ollama): ConfigV2 writes them after file_type, the `v` of the version dropped
    keys = list(rec.config)
    at = keys.index("file_type") + 1
    assert keys[at: at + 3] == ["renderer", "parser", "requires"]
    assert (rec.config["renderer"], rec.config["parser"], rec.config["requires"]) == (
        "qwen3-coder", "qwen3-coder", "0.14.0")
    info = store.show("coder")
    assert (info.renderer, info.parser, info.requires) == ("qwen3-coder", "qwen3-coder", "0.14.0")
    assert "RENDERER qwen3-coder\nPARSER qwen3-coder\n" in info.modelfile
    spec_ = store.resolve("coder")
    assert (spec_.renderer, spec_.parser, spec_.requires) == ("qwen3-coder", "qwen3-coder", "0.14.0")
    assert "tools" in spec_.capabilities  # the parser extracts calls, whatever the template says
    # compat(ollama): a model made FROM this one keeps them unless it names its own
    list(store.create("coder2", CreateSpec(from_="coder", parser="qwen3-thinking")))
    child = store.get("coder2").config
    inherited = [child[k] for k in ("renderer", "parser", "requires")]
    assert inherited == ["qwen3-coder", "qwen3-thinking", "0.14.0"]
    # a plain model's config has none of the three
    assert not {"renderer", "parser", "requires"} & set(store.get("base:1").config)


@pytest.mark.parametrize(("spec", "error", "message"), [
    (CreateSpec(), InvalidRequestError, "neither from nor files"),
    (CreateSpec(files={"../a.gguf": "sha256:" + "0" * 64}), InvalidRequestError, "must be a relative path"),
    (CreateSpec(files={"/a.gguf": "sha256:" + "0" * 64}), InvalidRequestError, "must be a relative path"),
    (CreateSpec(files={"a\\b": "sha256:" + "0" * 64}), InvalidRequestError, "must be a relative path"),
    (CreateSpec(files={"a.gguf": ""}), InvalidRequestError, "empty digest"),
    (CreateSpec(files={"a.gguf": "sha256:../../x"}), InvalidRequestError, "invalid digest"),
    (CreateSpec(files={"a.gguf": "sha256:" + "0" * 64}), InvalidRequestError, "not found; upload it"),
    (CreateSpec(from_="/etc/passwd"), InvalidRequestError, "from must name a model"),
    (CreateSpec(from_="nope:1"), ModelNotFoundError, 'model "nope:1" not found'),
    (CreateSpec(from_="../x"), InvalidRequestError, "from must name a model"),
    (CreateSpec(from_="a/b/c/d"), InvalidModelNameError, "invalid model name"),
    (CreateSpec(from_="base:1", parameters={"num_ctx": -1}), InvalidRequestError, "at least 1"),
    (CreateSpec(from_="base:1", messages=[Message(role="tool", content="x")]), InvalidRequestError,
     "invalid message role"),
    (CreateSpec(from_="base:1", renderer="gemma9"), InvalidRequestError, 'unknown renderer "gemma9"'),
    (CreateSpec(from_="base:1", parser="gemma9"), InvalidRequestError, 'unknown parser "gemma9"; corral has'),
    (CreateSpec(from_="base:1", requires="1.2.3.4"), InvalidRequestError, "requires must be a valid semver"),
    (CreateSpec(from_="base:1", requires="01.2"), InvalidRequestError, "requires must be a valid semver"),
])
def test_create_errors_write_nothing(store: Store, base: str, spec: CreateSpec, error: type,
                                     message: str) -> None:
    before = sorted(p.name for p in store.blobs_dir.iterdir())
    with pytest.raises(error, match=message):
        list(store.create("new:1", spec))
    assert [r.display for r in store.list()] == ["base:1"]
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == before


def test_create_invalid_name(store: Store, base: str) -> None:
    with pytest.raises(InvalidModelNameError):
        list(store.create("../../x", CreateSpec(from_="base:1")))


def test_create_refuses_a_non_gguf_blob(store: Store) -> None:
    digest = upload(store, b"GGUF\x03\0\0\0" + b"\0" * 10)
    with pytest.raises(InvalidModelFileError, match="bad.gguf: .*truncated"):
        list(store.create("bad", CreateSpec(files={"bad.gguf": digest})))
    assert store.list() == []


def test_quantize_validation(store: Store, base: str) -> None:
    with pytest.raises(InvalidRequestError, match='unsupported quantization type "q3_K"'):
        list(store.create("q", CreateSpec(from_="base:1"), quantize="q3_K"))
    with pytest.raises(InvalidRequestError, match="needs a backend"):
        list(store.create("q", CreateSpec(from_="base:1"), quantize="q8_0"))


def _cpu_quantizer():  # type: ignore[no-untyped-def]
    lib = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"
    if not list(lib.glob("libllama.so*")):
        pytest.skip("the CPU backend libraries are not built")
    from corral.config import Config
    from corral.runner import runner_quantizer, subprocess_runners

    # what the server does: each quantization in a runner process of the selected backend
    return runner_quantizer(subprocess_runners(Config(load_plugins=("cpu",)), backend="cpu"))


@pytest.mark.parametrize("qtype", ["q8_0", "Q4_K_M"])
def test_quantize_with_the_cpu_backend(tmp_path: Path, qtype: str) -> None:
    from corral.testing.tinymodel import write_tiny_gguf

    store = Store(tmp_path / "models", quantizer=_cpu_quantizer())
    write_tiny_gguf(tmp_path / "f16.gguf", n_embd=256, n_ff=512, quant="f16")
    digest = upload(store, (tmp_path / "f16.gguf").read_bytes())
    progress = list(store.create("q", CreateSpec(files={"f16.gguf": digest}), quantize=qtype))
    assert f"quantizing F16 model to {qtype.upper()}" in statuses(progress)
    assert "verifying conversion" in statuses(progress)
    rec = store.get("q")
    assert rec.config["file_type"] == qtype.upper() and rec.model_digest != digest
    assert sha256_file(rec.model_path)[0] == rec.model_digest  # type: ignore[arg-type]
    assert store.show("q").details.quantization_level == qtype.upper()
    with pytest.raises(InvalidRequestError, match="only supported for F16, BF16 and F32"):
        list(store.create("qq", CreateSpec(from_="q"), quantize="q8_0"))
    assert not list((store.blobs_dir / ".corral-tmp").iterdir())
    json.loads(store.manifest_path(rec.name).read_bytes())


def test_create_from_a_local_modelfile(store: Store, tmp_path: Path, tiny_gguf: Path) -> None:
    (tmp_path / "w.gguf").write_bytes(tiny_gguf.read_bytes())
    (tmp_path / "Modelfile").write_text("FROM ./w.gguf\nSYSTEM be kind\nPARAMETER stop </s>\n")
    progress = list(store.create_from_modelfile("local:1", tmp_path / "Modelfile"))
    digest = sha256_file(tmp_path / "w.gguf")[0]
    assert statuses(progress)[:2] == [f"copying file {digest}", "parsing GGUF"]
    rec = store.get("local:1")
    assert rec.model_digest == digest and rec.system == "be kind" and rec.params == {"stop": ["</s>"]}
    # Recreate it from the Modelfile that show prints: same layers, same manifest digest.
    (tmp_path / "Shown").write_text(store.show("local:1").modelfile)
    list(store.create_from_modelfile("again:1", tmp_path / "Shown"))
    assert store.get("again:1").digest == rec.digest


def test_add_blob_file_refuses_non_regular(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        store.add_blob_file(Path("/dev/zero"))
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        store.add_blob_file(tmp_path)
