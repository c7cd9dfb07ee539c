"""How the fake backend takes images and audio: a projector known from its GGUF metadata, each media
item read from its header only and standing for a fixed number of prompt tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec

from corral.config import Config
from corral.errors import CapabilityError, InvalidModelFileError, InvalidRequestError, ModelLoadError
from corral.gguf import read_gguf_info
from corral.media import IMAGE_FORMATS, inspect_media
from corral.types import GenerationRequest

__all__ = ["FakeProjector", "expand", "load_projector"]

DEFAULT_MEDIA_TOKENS = 16


class FakeProjector(msgspec.Struct, frozen=True, kw_only=True):
    """What the fake knows of a projector: its encoders and how many tokens one image becomes."""

    vision: bool
    audio: bool
    media_tokens: int = DEFAULT_MEDIA_TOKENS


def load_projector(path: str) -> FakeProjector:
    """Read a projector GGUF's metadata (``general.architecture = clip``) as the real backend's load
    would accept or refuse it."""
    try:
        kv = read_gguf_info(path, keep_arrays=False).kv
    except InvalidModelFileError as exc:
        raise ModelLoadError(f"could not load the model's projector: {exc}") from None
    if kv.get("general.architecture") != "clip":
        raise ModelLoadError("the model's projector is not one (general.architecture is not clip)")
    size, patch = kv.get("clip.vision.image_size"), kv.get("clip.vision.patch_size")
    tokens = (size // patch) ** 2 if isinstance(size, int) and isinstance(patch, int) and patch > 0 else 0
    # Audio is not claimed, as the llama.cpp backend does not claim it (projector_capabilities).
    return FakeProjector(vision=kv.get("clip.has_vision_encoder") is True, audio=False,
                         media_tokens=tokens if 0 < tokens <= 4096 else DEFAULT_MEDIA_TOKENS)


def expand(projector: FakeProjector | None, request: GenerationRequest,
           detokenize: Callable[[list[int]], str]) -> tuple[list[int], str]:
    """The prompt's keys (media items become ``media_tokens`` negative keys from their bytes' hash, as
    the real backend's do) and its text, with a ``[image png 40x30 1a2b3c4d]`` tag for each item."""
    if not request.media:
        return list(request.prompt), detokenize(request.prompt)
    if projector is None:
        raise CapabilityError("this model has no projector loaded, so it cannot read images or audio")
    limits = Config.from_env().media_limits
    prompt, keys, text, prev = request.prompt, [], [], 0
    for i, media in enumerate(request.media):
        if not prev <= media.position <= len(prompt):
            raise InvalidRequestError(f"media {i + 1} is placed at {media.position}, outside the prompt")
        what = f"{'image' if media.kind == 'image' else 'audio clip'} {i + 1}"
        info = inspect_media(media.data, limits, what)
        if not (projector.vision if info.kind == "image" else projector.audio):
            raise CapabilityError(f"this model's projector does not take {info.kind}s")
        if info.kind == "image" and info.format not in IMAGE_FORMATS:
            raise InvalidRequestError(f"{what} is {info.format.upper()}; send PNG, JPEG, GIF or BMP")
        keys += prompt[prev : media.position]
        text.append(detokenize(prompt[prev : media.position]))
        prev = media.position
        digest = hashlib.sha256(media.data).digest()
        base = int.from_bytes(digest[:6], "big") << 12
        keys += [-1 - (base + r) for r in range(projector.media_tokens)]
        size = f" {info.width}x{info.height}" if info.kind == "image" else ""
        text.append(f"[{info.kind} {info.format}{size} {digest.hex()[:8]}]")
    keys += prompt[prev:]
    text.append(detokenize(prompt[prev:]))
    return keys, "".join(text)
