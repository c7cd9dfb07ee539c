"""Draft models in the store: DRAFT / draft_files stored as a draft layer, the vocabulary rule at create
and at resolve, draft_quantize, inheritance FROM a model, show, and push/pull carrying the layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import InvalidModelFileError, InvalidRequestError, ModelfileError
from corral.store import CreateSpec, Store
from corral.store import manifest as mf
from corral.store.blobs import sha256_file
from corral.store.draft import vocab_problem
from corral.store.modelfile import parse_modelfile
from corral.testing.registry import TestRegistry
from corral.testing.tinymodel import DEFAULT_WORDS, write_tiny_gguf

from .conftest import collect, statuses
from .test_create import _cpu_quantizer
from .test_push import upload


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A target, a smaller draft with the same vocabulary, and a model with another vocabulary."""
    d = tmp_path_factory.mktemp("drafts")
    write_tiny_gguf(d / "target.gguf")
    write_tiny_gguf(d / "draft.gguf", n_layer=1, n_embd=32, n_ff=64, seed=3)
    write_tiny_gguf(d / "f16-draft.gguf", n_layer=1, n_embd=64, n_ff=128, seed=4, quant="f16")
    write_tiny_gguf(d / "other.gguf", vocab=[*DEFAULT_WORDS[::-1], "zebra"], seed=5)
    return {p.stem: p for p in d.glob("*.gguf")}


def test_the_vocabulary_rule(ggufs: dict[str, Path]) -> None:
    assert vocab_problem(ggufs["target"], ggufs["draft"]) is None
    assert vocab_problem(ggufs["target"], ggufs["target"]) is None  # a model may draft for itself
    problem = vocab_problem(ggufs["target"], ggufs["other"])
    assert problem is not None and problem.startswith("token ")


def test_create_with_a_draft_stores_a_draft_layer(store: Store, ggufs: dict[str, Path]) -> None:
    model, draft = upload(store, ggufs["target"]), upload(store, ggufs["draft"])
    spec = CreateSpec(files={"t.gguf": model}, draft_files={"d.gguf": draft})
    progress = list(store.create("spec:1", spec))
    assert statuses(progress)[-2:] == ["writing manifest", "success"]
    rec = store.get("spec:1")
    assert [layer.media_type for layer in rec.manifest.layers] == [mf.MODEL, mf.DRAFT]
    assert rec.draft == store.blob_path(draft) and rec.model_digest == model
    assert rec.config["draft"] == {"model_format": "gguf", "architecture": "llama"}
    cfg = json.loads(store.blob_path(rec.manifest.config.digest).read_bytes())  # type: ignore[union-attr]
    assert list(cfg).index("draft") < list(cfg).index("architecture")  # Ollama's ConfigV2 key order
    assert store.resolve("spec:1").files.draft == str(store.blob_path(draft))
    shown = store.show("spec:1")
    assert f"DRAFT {store.blob_path(draft)}" in shown.modelfile.splitlines()
    assert shown.draft_info is not None and shown.draft_info["general.architecture"] == "llama"
    assert store.show("spec:1").model_info["llama.block_count"] == 2  # the model's, not the draft's
    # FROM the model keeps its draft; a new DRAFT replaces it; a model without one has none.
    list(store.create("child:1", CreateSpec(from_="spec:1", system="hi")))
    child = store.get("child:1")
    assert child.draft == rec.draft and child.config["draft"] == rec.config["draft"]
    list(store.create("swap:1", CreateSpec(from_="spec:1", draft_files={"t.gguf": model})))
    assert store.get("swap:1").draft == store.blob_path(model)
    assert [layer.media_type for layer in store.get("swap:1").manifest.layers].count(mf.DRAFT) == 1
    list(store.create("plain:1", CreateSpec(files={"t.gguf": model})))
    assert store.get("plain:1").draft is None and "draft" not in store.get("plain:1").config
    assert store.resolve("plain:1").files.draft is None


def test_create_refuses_drafts_that_cannot_serve(store: Store, ggufs: dict[str, Path]) -> None:
    model, draft, other = (upload(store, ggufs[k]) for k in ("target", "draft", "other"))
    with pytest.raises(InvalidRequestError, match=r"draft o.gguf cannot draft for this model: token \d+"):
        list(store.create("bad:1", CreateSpec(files={"t.gguf": model}, draft_files={"o.gguf": other})))
    with pytest.raises(InvalidRequestError, match="one draft model"):
        list(store.create("bad:1", CreateSpec(files={"t.gguf": model},
                                              draft_files={"a.gguf": draft, "b.gguf": model})))
    with pytest.raises(InvalidRequestError, match="draft_quantize requires a draft model"):
        list(store.create("bad:1", CreateSpec(files={"t.gguf": model}), draft_quantize="q8_0"))
    with pytest.raises(InvalidRequestError, match='unsupported quantization type "q3"'):
        list(store.create("bad:1", CreateSpec(files={"t.gguf": model}, draft_files={"d.gguf": draft}),
                          draft_quantize="q3"))
    with pytest.raises(InvalidRequestError, match="must be a relative path"):
        list(store.create("bad:1", CreateSpec(files={"t.gguf": model}, draft_files={"../d.gguf": draft})))
    missing = "sha256:" + "0" * 64
    with pytest.raises(InvalidRequestError, match="not found; upload it"):
        list(store.create("bad:1", CreateSpec(files={"t.gguf": model}, draft_files={"d.gguf": missing})))
    with pytest.raises(InvalidRequestError, match="needs a backend"):
        list(store.create("bad:1", CreateSpec(files={"t.gguf": model}, draft_files={"d.gguf": draft}),
                          draft_quantize="q8_0"))
    assert not any(name.display.startswith("bad") for name, _ in store.manifest_files())


def test_a_pulled_draft_that_cannot_serve_is_a_400_at_resolve(store: Store, ggufs: dict[str, Path]) -> None:
    """A manifest that never went through create (a registry's) is checked when it is used."""
    model, other = upload(store, ggufs["target"]), upload(store, ggufs["other"])
    list(store.create("hand:1", CreateSpec(files={"t.gguf": model})))
    rec = store.get("hand:1")
    layers = [*rec.manifest.layers, mf.Layer(mf.DRAFT, other, store.blob_path(other).stat().st_size)]
    store.write_manifest(rec.name, mf.Manifest(config=rec.manifest.config, layers=layers))
    with pytest.raises(InvalidModelFileError, match='draft model of "hand:1" cannot draft for it: token'):
        store.resolve("hand:1")


def test_draft_quantize_with_the_cpu_backend(tmp_path: Path, ggufs: dict[str, Path]) -> None:
    store = Store(tmp_path / "models", quantizer=_cpu_quantizer())
    model, draft = upload(store, ggufs["target"]), upload(store, ggufs["f16-draft"])
    progress = list(store.create("q:1", CreateSpec(files={"t.gguf": model}, draft_files={"d.gguf": draft}),
                                 draft_quantize="q8_0"))
    assert "quantizing F16 draft model to Q8_0" in statuses(progress)
    rec = store.get("q:1")
    assert rec.model_digest == model  # the model itself is left as it was
    assert rec.draft is not None and rec.draft != store.blob_path(draft)
    assert sha256_file(rec.draft)[0] == next(layer.digest for layer in rec.manifest.layers
                                             if layer.media_type == mf.DRAFT)
    assert store.show("q:1").draft_info["general.file_type"] == 7  # type: ignore[index]  # Q8_0


def test_modelfile_draft(store: Store, tmp_path: Path, ggufs: dict[str, Path]) -> None:
    (tmp_path / "t.gguf").write_bytes(ggufs["target"].read_bytes())
    (tmp_path / "d.gguf").write_bytes(ggufs["draft"].read_bytes())
    (tmp_path / "Modelfile").write_text("FROM ./t.gguf\nDRAFT ./d.gguf\nPARAMETER draft_num_predict 3\n")
    list(store.create_from_modelfile("mf:1", tmp_path / "Modelfile"))
    rec = store.get("mf:1")
    assert rec.draft is not None and sha256_file(rec.draft)[0] == sha256_file(tmp_path / "d.gguf")[0]
    assert rec.params == {"draft_num_predict": 3}
    # show's Modelfile creates the same model again
    (tmp_path / "Shown").write_text(store.show("mf:1").modelfile)
    list(store.create_from_modelfile("again:1", tmp_path / "Shown"))
    assert store.get("again:1").digest == rec.digest
    # compat(ollama): DRAFT may not name FROM's own file; a DRAFT that is no file is an error
    (tmp_path / "Same").write_text("FROM ./t.gguf\nDRAFT ./t.gguf\n")
    with pytest.raises(ModelfileError, match="line 2: DRAFT must not reference the same local path as FROM"):
        list(store.create_from_modelfile("x:1", tmp_path / "Same"))
    (tmp_path / "Gone").write_text("FROM ./t.gguf\nDRAFT ./nothing.gguf\n")
    with pytest.raises(ModelfileError):
        list(store.create_from_modelfile("x:1", tmp_path / "Gone"))
    with pytest.raises(ModelfileError, match="must be at most 64"):
        parse_modelfile("FROM x\nPARAMETER draft_num_predict 65\n")


def test_push_and_pull_carry_the_draft(store: Store, registry: TestRegistry, ggufs: dict[str, Path]) -> None:
    model, draft = upload(store, ggufs["target"]), upload(store, ggufs["draft"])
    name = f"{registry.host}/library/spec:v1"
    list(store.create(name, CreateSpec(files={"t.gguf": model}, draft_files={"d.gguf": draft})))
    before = store.get(name)
    progress = collect(store.push(name, insecure=True))
    assert f"pushing {draft[7:19]}" in statuses(progress)
    store.delete(name)
    assert not store.blob_path(draft).exists()
    collect(store.pull(name, insecure=True))
    after = store.get(name)
    assert after.digest == before.digest and after.draft == store.blob_path(draft)
    assert sha256_file(store.blob_path(draft))[0] == draft
