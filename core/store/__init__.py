"""The model store: Ollama-compatible manifests and blobs, and pull/push/create/list/show/copy/delete.

Public API (the server, CLI and engine code against these names; keep them):

- ``Store(root, *, noprune=False, quantizer=None, transfer=None)``; ``Store.from_config(config, quantizer=)``
- ``store.list() -> list[ModelRecord]`` (newest first); ``store.get(name) -> ModelRecord``
  (``gemma3:270m`` is imported from its PyPI package on first use); ``store.resolve(name) ->
  corral.spec.ModelSpec`` (what the engine reads: files, layers, GGUF facts, capabilities, details);
  ``store.show(name, verbose=False, overrides=ShowOverrides()) -> ShowInfo``; ``store.copy(src, dst)``;
  ``store.delete(name)``;
  ``store.gc(grace=3600) -> list[str]``
- ``store.blob_path(digest)`` (the one validating path builder), ``store.has_blob(digest)``,
  ``await store.put_blob(digest, chunks) -> bool``, ``store.add_blob_file(path) -> digest``
- ``store.create(name, spec, quantize=None) -> Iterator[Progress]`` (blocking; run it in a thread),
  ``store.create_from_modelfile(name, path, quantize=None)``
- ``store.pull(name, insecure=False)`` / ``store.push(name, insecure=False)``: async iterators of
  ``Progress``; ``store.ensure_default_model() -> ModelRecord``
- ``corral.store.layout.StoreLayout`` (the ``Store``'s base): the files on disk (``blob_path``,
  ``find_manifest``, ``read_manifest``/``write_manifest``, ``read_record``, ``pinned``, ``remove_unused``);
  the operation modules (create, pull, push, show, default_model) take a layout, never the Store
- Modelfile: ``corral.store.modelfile.parse_modelfile``, ``parameters_of``, ``convert_parameter``;
  ``corral.store.create.spec_from_modelfile(modelfile, base_dir) -> (CreateSpec, {digest: path})``
- Test kit: ``corral.testing.registry.TestRegistry`` (an in-process registry with faults)
"""

from __future__ import annotations

from corral.store.records import CreateSpec, ModelRecord, Progress, ShowInfo
from corral.store.show import ShowOverrides
from corral.store.store import Store
from corral.store.transfer import TransferSettings

__all__ = ["CreateSpec", "ModelRecord", "Progress", "ShowInfo", "ShowOverrides", "Store", "TransferSettings"]
