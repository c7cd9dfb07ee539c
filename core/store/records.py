"""What the store hands out: ModelRecord, ShowInfo, Progress, CreateSpec (the engine gets a ModelSpec)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec

from corral.conversation import Message
from corral.names import ModelName
from corral.spec import ModelDetails
from corral.store.manifest import Manifest


class Progress(msgspec.Struct, omit_defaults=True):
    """One line of a pull/push/create stream, shaped like Ollama's ``ProgressResponse``."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class ModelRecord(msgspec.Struct, kw_only=True):
    """One model in the store: its manifest and everything its layers say.

    ``template`` is the Go template text of the template layer; ``params`` the params layer's JSON
    object; ``config`` the config blob (model_format, model_family, model_type, file_type, ...).
    """

    name: ModelName
    display: str
    digest: str  # hex sha256 of the manifest file bytes
    modified_at: dt.datetime
    size: int
    manifest: Manifest
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    model_path: Path | None = None
    model_digest: str | None = None
    adapters: list[Path] = msgspec.field(default_factory=list)
    projector: Path | None = None
    draft: Path | None = None  # the draft model GGUF (Modelfile DRAFT), for speculative decoding
    template: str | None = None
    system: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    messages: list[Message] = msgspec.field(default_factory=list)
    license: list[str] = msgspec.field(default_factory=list)

    @property
    def details(self) -> ModelDetails:
        """Details from the config blob alone (no GGUF read), as Ollama's ``/api/tags`` does."""
        c = self.config
        fams = c.get("model_families")
        parent = next((layer.from_ for layer in self.manifest.layers
                       if layer.media_type == "application/vnd.ollama.image.model" and layer.from_), "")
        return ModelDetails(
            parent_model=parent,
            format=c.get("model_format") or "gguf",
            family=c.get("model_family") or "",
            families=tuple(str(f) for f in fams) if isinstance(fams, list) else None,
            parameter_size=c.get("model_type") or "",
            quantization_level=c.get("file_type") or "",
            context_length=_int_or_none(c.get("context_length")),
            embedding_length=_int_or_none(c.get("embedding_length")),
        )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ShowInfo(msgspec.Struct, kw_only=True):
    """What ``/api/show`` reports about one model."""

    license: str
    modelfile: str
    parameters: str
    template: str
    system: str
    details: ModelDetails
    messages: list[Message]
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: dt.datetime
    projector_info: dict[str, Any] | None = None
    draft_info: dict[str, Any] | None = None  # the draft model GGUF's metadata, as model_info
    tensors: list[dict[str, Any]] | None = None
    renderer: str = ""  # the built-in prompt renderer the config names (Modelfile RENDERER)
    parser: str = ""  # the built-in output parser (Modelfile PARSER)
    requires: str = ""  # the minimum Ollama version the model says it needs (Modelfile REQUIRES)


class CreateSpec(msgspec.Struct, kw_only=True):
    """Ollama's ``/api/create`` fields (minus the name and quantize, passed separately).

    ``files``, ``adapters`` and ``draft_files`` map a relative file name to a blob digest uploaded
    beforehand; the server never opens a path a client names.
    """

    from_: str | None = None
    files: dict[str, str] = msgspec.field(default_factory=dict)
    adapters: dict[str, str] = msgspec.field(default_factory=dict)
    draft_files: dict[str, str] = msgspec.field(default_factory=dict)  # Modelfile DRAFT: one GGUF
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    renderer: str | None = None  # Modelfile RENDERER: a built-in prompt renderer's name
    parser: str | None = None  # Modelfile PARSER: a built-in output parser's name
    requires: str | None = None  # Modelfile REQUIRES: the minimum version, semver
