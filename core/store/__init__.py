"""The model store: Ollama-compatible manifests and blobs, and pull/push/create/list/show/copy/delete.

Public API (the server, CLI and engine code against these names):
``Store``, ``ModelRecord``, ``ModelDetails``, ``ShowInfo``, ``Progress``, ``CreateSpec``,
``TransferSettings``; Modelfile helpers in ``corral.store.modelfile``; ``spec_from_modelfile`` in
``corral.store.create``.
"""

from __future__ import annotations

from corral.store.records import CreateSpec, ModelDetails, ModelRecord, Progress, ShowInfo
from corral.store.store import Store
from corral.store.transfer import TransferSettings

__all__ = ["CreateSpec", "ModelDetails", "ModelRecord", "Progress", "ShowInfo", "Store", "TransferSettings"]
