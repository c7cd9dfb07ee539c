"""A vision model in the store: the projector is its own layer that create, show, Modelfile, push and
pull keep."""

from __future__ import annotations

from pathlib import Path

from corral.store import CreateSpec, Store
from corral.store import manifest as mf
from corral.store.create import spec_from_modelfile
from corral.store.modelfile import parse_modelfile
from corral.testing.registry import TestRegistry
from corral.testing.tinyvision import write_tiny_projector

from .conftest import collect
from .test_push import upload


def test_a_projector_is_its_own_layer_through_create_show_push_and_pull(
        store: Store, registry: TestRegistry, tiny_gguf: Path, tmp_path: Path) -> None:
    proj = Path(write_tiny_projector(tmp_path / "mmproj.gguf").path)
    files = {"model.gguf": upload(store, tiny_gguf), "mmproj.gguf": upload(store, proj)}
    name = f"{registry.host}/library/tiny-vision:v1"
    list(store.create(name, CreateSpec(files=files)))
    record = store.get(name)
    kinds = {layer.media_type: layer.digest for layer in record.manifest.layers}
    assert kinds[mf.PROJECTOR] == files["mmproj.gguf"] and kinds[mf.MODEL] == files["model.gguf"]
    assert mf.PROJECTOR == "application/vnd.ollama.image.projector"

    info = store.show(name)
    assert "vision" in info.capabilities
    assert info.projector_info and info.projector_info["general.architecture"] == "clip"
    assert "vision" in store.resolve(name).capabilities and store.resolve(name).files.projector

    # Ollama's Modelfile for a vision model: two FROM lines, the weights and the projector.
    froms = [line for line in info.modelfile.splitlines() if line.startswith("FROM ")]
    assert froms == [f"FROM {record.model_path}", f"FROM {record.projector}"]
    spec, uploads = spec_from_modelfile(parse_modelfile(info.modelfile), tmp_path)
    assert sorted(spec.files.values()) == sorted(files.values()) and len(uploads) == 2

    collect(store.push(name, insecure=True))
    store.delete(name)
    collect(store.pull(name, insecure=True))
    again = store.get(name)
    assert again.digest == record.digest and again.projector is not None and again.projector.is_file()
    assert "vision" in store.show(name).capabilities


def test_a_model_without_a_projector_has_no_vision(store: Store, tiny_gguf: Path) -> None:
    list(store.create("plain", CreateSpec(files={"m.gguf": upload(store, tiny_gguf)})))
    info = store.show("plain")
    assert "vision" not in info.capabilities and info.projector_info is None
