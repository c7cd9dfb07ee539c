"""Docker v2 manifests with Ollama's layer media types: decode (bounded, validated) and encode."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from corral.errors import RegistryError
from corral.store.blobs import is_valid_digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
_P = "application/vnd.ollama.image."
MODEL = _P + "model"
PROJECTOR = _P + "projector"
ADAPTER = _P + "adapter"
DRAFT = _P + "draft"  # a draft model for speculative decoding (Ollama 2026)
TEMPLATE = _P + "template"
PROMPT = _P + "prompt"  # legacy name of the template layer
SYSTEM = _P + "system"
PARAMS = _P + "params"
MESSAGES = _P + "messages"
LICENSE = _P + "license"

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LAYERS = 1000
MAX_LAYER_SIZE = 1 << 42  # 4 TiB: larger than any model, small enough to catch nonsense


class Layer(msgspec.Struct, omit_defaults=True, rename="camel"):
    """One blob reference: ``mediaType``, ``digest``, ``size`` (+ Ollama's optional from/name)."""

    media_type: str
    digest: str
    size: int
    from_: str | None = msgspec.field(default=None, name="from")
    name: str | None = None


class Manifest(msgspec.Struct, rename="camel"):
    """The manifest file as Ollama writes it (key order: schemaVersion, mediaType, config, layers)."""

    schema_version: int = 2
    media_type: str = MANIFEST_MEDIA_TYPE
    config: Layer | None = None
    layers: list[Layer] = msgspec.field(default_factory=list)

    def all_layers(self) -> list[Layer]:
        """Config first, then layers (the order Ollama downloads them in)."""
        return ([self.config] if self.config else []) + list(self.layers)

    def digests(self) -> set[str]:
        return {layer.digest for layer in self.all_layers()}

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.all_layers())


_decoder = msgspec.json.Decoder(Manifest)
_encoder = msgspec.json.Encoder()


def decode_manifest(data: bytes, *, source: str = "manifest") -> Manifest:
    """Parse and validate manifest bytes; every digest, size and count is checked.

    Raises:
        RegistryError: naming what is wrong (callers re-raise as they see fit).
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise RegistryError(f"{source} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        m = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RegistryError(f"{source} is not a valid manifest: {exc}") from None
    if m.schema_version != 2:
        raise RegistryError(f"{source} has unsupported schemaVersion {m.schema_version}")
    if len(m.layers) > MAX_LAYERS:
        raise RegistryError(f"{source} has {len(m.layers)} layers, more than {MAX_LAYERS}")
    if not m.layers:
        raise RegistryError(f"{source} has no layers")
    for layer in m.all_layers():
        if not is_valid_digest(layer.digest) or layer.digest.startswith("sha256-"):
            shown = layer.digest[:80] if layer.digest.isprintable() else repr(layer.digest[:80])
            raise RegistryError(f'{source} has an invalid layer digest "{shown}"')
        if layer.size < 0 or layer.size > MAX_LAYER_SIZE:
            raise RegistryError(f"{source} has a layer of impossible size {layer.size}")
    return m


def encode_manifest(m: Manifest) -> bytes:
    return _encoder.encode(m)


def manifest_digest(data: bytes) -> str:
    """The hex sha256 of the manifest bytes: ``/api/tags`` digest and the CLI's ID column."""
    return hashlib.sha256(data).hexdigest()


def make_config(*, family: str, families: list[str], model_type: str, file_type: str,
                layer_digests: list[str], extra: dict[str, Any] | None = None, renderer: str = "",
                parser: str = "", requires: str = "", draft: dict[str, str] | None = None) -> bytes:
    """The config blob (Ollama's ``ConfigV2``), key order as Ollama writes it (empty names left out);
    ``draft`` describes the draft layer (``model_format``, ``architecture``)."""
    cfg: dict[str, Any] = {
        "model_format": "gguf",
        "model_family": family,
        "model_families": families,
        "model_type": model_type,
        "file_type": file_type,
    }
    cfg.update({k: v for k, v in (("renderer", renderer), ("parser", parser), ("requires", requires)) if v})
    if draft:
        cfg["draft"] = draft
    cfg |= {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }
    cfg.update(extra or {})
    return _encoder.encode(cfg)
