"""A multimodal projector (mmproj) loaded beside its text model through libmtmd: media bytes become
mtmd's chunks for a prompt, and image or audio chunks become embeddings."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np

from corral.config import Config
from corral.errors import BackendError, CapabilityError, InvalidRequestError, ModelLoadError
from corral.media import IMAGE_FORMATS, MediaLimits, inspect_media
from corral.types import GenerationRequest, LoadOptions, MediaInput

from .model import LlamaModel, check_gguf
from .slots import default_threads

__all__ = ["MediaSpan", "Projector", "media_key", "projector_params"]

# Image token keys: a prompt position that holds media embeddings carries a negative key derived from
# the media bytes' SHA-256, the chunk's index inside that media and the row inside the chunk. Equal
# keys mean equal embeddings, so prefix matching (and KV reuse across turns) works on them as on tokens.
_ROW_BITS = 20  # rows per chunk: far more than any projector emits
_CHUNK_BITS = 8


def media_key(digest: bytes, chunk: int, row: int) -> int:
    """The prompt key of ``row`` of chunk ``chunk`` of the media whose SHA-256 is ``digest``."""
    base = int.from_bytes(digest[:8], "big")
    return -1 - ((((base << _CHUNK_BITS) | chunk) << _ROW_BITS) | row)


class MediaSpan:
    """One image or audio chunk inside a prompt: its place, its mtmd chunk until encoded, then its rows.

    The encoder thread and the batching loop share it; ``MediaEncoder`` guards every state change.
    """

    __slots__ = ("start", "n", "kind", "non_causal", "chunk", "state", "embd", "error")

    def __init__(self, start: int, n: int, kind: str, non_causal: bool, chunk: Any) -> None:
        self.start = start
        self.n = n
        self.kind = kind
        self.non_causal = non_causal
        self.chunk = chunk  # an owned mtmd_input_chunk copy, freed once encoded or dropped
        self.state = "new"  # new | queued | encoding | done | failed | dropped
        self.embd: np.ndarray | None = None  # (n, n_embd) float32 once encoded
        self.error: BaseException | None = None

    @property
    def end(self) -> int:
        return self.start + self.n


def projector_params(lib: Any, options: LoadOptions) -> Any:
    """The ``mtmd_context_params`` of a projector loaded with ``options`` (the memory estimate's too)."""
    params = lib.mtmd_context_params_default()
    params.use_gpu = options.num_gpu != 0
    params.print_timings = False
    params.n_threads = int(options.num_thread) or default_threads()
    if options.flash_attention is not None:
        fa = "ENABLED" if options.flash_attention else "DISABLED"
        params.flash_attn_type = getattr(lib, f"LLAMA_FLASH_ATTN_TYPE_{fa}")
    return params


class Projector:
    """Owns one ``mtmd_context``. Media preparation runs on any thread; encoding on one at a time."""

    def __init__(self, model: LlamaModel, path: str, options: LoadOptions) -> None:
        self.model = model
        self.ffi, self.lib = ffi, lib = model.ffi, model.lib
        self.path = str(path)
        check_gguf(self.path)  # the bounded reader first: clip.cpp trusts what it reads
        params = projector_params(lib, options)
        self._marker = lib.mtmd_default_marker()  # a C string that lives as long as the library
        ctx = lib.mtmd_init_from_file(self.path.encode(), model.ptr, params)
        if ctx == ffi.NULL:
            raise ModelLoadError("llama.cpp could not load the model's projector (not a projector, a "
                                 "projector for another model, or out of memory; see the log)")
        self.ctx = ctx
        self.vision = bool(lib.mtmd_support_vision(ctx))
        # Audio is not taken yet (see corral.prompts.capabilities.projector_capabilities): a clip's
        # decoded length cannot be bounded from every format's header before decoding it.
        self.audio = False
        if lib.mtmd_decode_use_mrope(ctx):
            # M-RoPE (Qwen2-VL and its successors) gives image rows 2-D positions that do not advance
            # one per row; the batching loop's position bookkeeping assumes they do.
            self.free()
            raise ModelLoadError("this projector needs M-RoPE positions (the Qwen-VL family), which "
                                 "corral does not support yet")
        self.n_embd = int(lib.llama_model_n_embd_inp(model.ptr))
        self.limits = _limits()
        self._free_lock = threading.Lock()

    # ---- prompts ---------------------------------------------------------------------------------
    def expand(self, request: GenerationRequest) -> tuple[list[int], list[MediaSpan]]:
        """The prompt with each media item replaced by mtmd's chunks for it: text chunks (a model's
        begin/end-of-image tokens) as token ids, media chunks as ``media_key`` rows with their span.

        Decodes and preprocesses the media (bounded by ``corral.media`` limits first) on the calling
        thread. Bad media raise ``InvalidRequestError``; media the projector cannot take,
        ``CapabilityError``.
        """
        prompt = request.prompt
        keys: list[int] = []
        spans: list[MediaSpan] = []
        prev = 0
        try:
            for i, media in enumerate(request.media):
                if not prev <= media.position <= len(prompt):
                    raise InvalidRequestError(f"media {i + 1} is placed at {media.position}, outside the "
                                              "prompt")
                keys += prompt[prev : media.position]
                prev = media.position
                self._expand_one(media, i, keys, spans)
            keys += prompt[prev:]
        except BaseException:
            for span in spans:
                self.drop_chunk(span)
            raise
        return keys, spans

    def _expand_one(self, media: MediaInput, index: int, keys: list[int], spans: list[MediaSpan]) -> None:
        ffi, lib = self.ffi, self.lib
        what = f"{'image' if media.kind == 'image' else 'audio clip'} {index + 1}"
        info = inspect_media(media.data, self.limits, what)
        if info.kind != media.kind:
            raise InvalidRequestError(f"{what} is {info.kind} ({info.format}), not {media.kind}")
        if info.kind == "image" and not self.vision:
            raise CapabilityError("this model's projector does not take images")
        if info.kind == "audio" and not self.audio:
            raise CapabilityError("audio input is not supported by this model in corral")
        if info.kind == "image" and info.format not in IMAGE_FORMATS:
            raise InvalidRequestError(f"{what} is {info.format.upper()}; send PNG, JPEG, GIF or BMP")
        digest = hashlib.sha256(media.data).digest()
        bitmap = self._bitmap(media.data, info.kind, f"{what} ({info.format.upper()})")
        chunks = ffi.NULL
        try:
            lib.mtmd_bitmap_set_id(bitmap, digest.hex().encode())
            chunks = lib.mtmd_input_chunks_init()
            text = ffi.new("mtmd_input_text *")
            text.text = self._marker
            text.text_len = len(ffi.string(self._marker))
            text.add_special = False
            text.parse_special = True
            bitmaps = ffi.new("mtmd_bitmap *[1]", [bitmap])
            rc = lib.mtmd_tokenize(self.ctx, chunks, text, bitmaps, 1)
            if rc != 0:
                raise InvalidRequestError(f"{what} could not be prepared for the model (mtmd_tokenize: {rc})")
            n_media = 0
            for c in range(int(lib.mtmd_input_chunks_size(chunks))):
                chunk = lib.mtmd_input_chunks_get(chunks, c)
                kind = int(lib.mtmd_input_chunk_get_type(chunk))
                if kind == lib.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ffi.new("size_t *")
                    ptr = lib.mtmd_input_chunk_get_tokens_text(chunk, n)
                    keys += ffi.unpack(ptr, n[0])
                    continue
                n_rows = int(lib.mtmd_input_chunk_get_n_tokens(chunk))
                if n_rows <= 0 or n_rows >= 1 << _ROW_BITS or n_media >= 1 << _CHUNK_BITS:
                    raise InvalidRequestError(f"{what} became an unusable chunk of {n_rows} tokens")
                if int(lib.mtmd_input_chunk_get_n_pos(chunk)) != n_rows:  # one position per row, always
                    raise BackendError(f"{what}: this projector's rows do not take one position each")
                owned = lib.mtmd_input_chunk_copy(chunk)
                if owned == ffi.NULL:
                    raise BackendError("mtmd could not copy a media chunk (out of memory?)")
                non_causal = bool(lib.mtmd_decode_use_non_causal(self.ctx, chunk))
                spans.append(MediaSpan(len(keys), n_rows, info.kind, non_causal, owned))
                keys += [media_key(digest, n_media, r) for r in range(n_rows)]
                n_media += 1
        finally:
            if chunks != ffi.NULL:
                lib.mtmd_input_chunks_free(chunks)
            lib.mtmd_bitmap_free(bitmap)

    def _bitmap(self, data: bytes, kind: str, what: str) -> Any:
        ffi, lib = self.ffi, self.lib
        if kind == "image":
            err = ffi.new("int *")
            bitmap = lib.corral_bitmap_from_image(data, len(data), self.limits.max_pixels, err)
            if bitmap != ffi.NULL:
                return bitmap
            if err[0] == 2:
                raise InvalidRequestError(f"{what} has too many pixels")
            # The header looked right to corral.media, so stb_image found the rest broken.
            reason = ffi.string(lib.corral_image_failure_reason()).decode("utf-8", "replace")
            raise InvalidRequestError(f"{what} is damaged" + (f": {reason}" if reason else ""))
        raise CapabilityError(f"{what}: audio input is not supported by this model in corral")

    # ---- encoding --------------------------------------------------------------------------------
    def encode(self, span: MediaSpan) -> np.ndarray:
        """Run the projector on ``span``'s chunk: ``(n, n_embd)`` float32 rows. One call at a time."""
        lib = self.lib
        rc = lib.mtmd_encode_chunk(self.ctx, span.chunk)
        if rc != 0:
            raise BackendError(f"the projector failed to encode the {span.kind} (mtmd_encode_chunk: {rc})")
        ptr = lib.mtmd_get_output_embd(self.ctx)
        if ptr == self.ffi.NULL:
            raise BackendError(f"the projector produced no embeddings for the {span.kind}")
        size = span.n * self.n_embd
        rows = np.frombuffer(self.ffi.buffer(ptr, size * 4), dtype=np.float32, count=size)
        return rows.reshape(span.n, self.n_embd).copy()

    def drop_chunk(self, span: MediaSpan) -> None:
        """Free ``span``'s mtmd chunk (once); its preprocessed pixels are no longer needed."""
        with self._free_lock:
            chunk, span.chunk = span.chunk, None
        if chunk is not None:
            self.lib.mtmd_input_chunk_free(chunk)

    def free(self) -> None:
        """Free the mtmd context; a second call does nothing."""
        ctx = getattr(self, "ctx", None)
        if ctx is not None and ctx != self.ffi.NULL:
            self.ctx = self.ffi.NULL
            self.lib.mtmd_free(ctx)


def _limits() -> MediaLimits:
    try:
        return Config.from_env().media_limits
    except ValueError:  # the server validated the environment; a runner only needs sane bounds
        return MediaLimits()
