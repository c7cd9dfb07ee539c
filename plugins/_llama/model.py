"""A loaded llama.cpp model: validated load, metadata, tokenization, LoRA adapters and free."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.errors import BackendError, InvalidRequestError, ModelLoadError
from corral.gguf import GGUFInfo, file_type_name, read_gguf_info
from corral.types import LoadOptions, ModelInfo
from corral_plugins._llama import library
from corral_plugins._llama.library import Native

_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
# llama_tokenize takes the text length as int32; a longer text could never be tokenized anyway.
MAX_TEXT_BYTES = (1 << 31) - 1


# ---- progress callback ---------------------------------------------------------------------------
# One extern "Python" function per compiled module; each load passes its own Python state through
# user_data (an ffi handle), so concurrent loads in one process never mix up their callbacks.
_progress_installed: set[int] = set()
_progress_lock = threading.Lock()


class _Progress:
    __slots__ = ("callback", "error", "cancelled")

    def __init__(self, callback: Callable[[float], bool]) -> None:
        self.callback = callback
        self.error: BaseException | None = None
        self.cancelled = False


def _install_progress(ffi: Any) -> None:
    with _progress_lock:
        if id(ffi) in _progress_installed:
            return

        @ffi.def_extern()
        def corral_progress_cb(progress: float, user_data: Any) -> bool:
            state: _Progress = ffi.from_handle(user_data)
            try:
                go = state.callback(float(progress))
            except BaseException as exc:  # a raising callback cancels the load; the error is re-raised
                state.error = exc
                go = False
            if go is False:
                state.cancelled = True
                return False
            return True

        _progress_installed.add(id(ffi))


def check_gguf(path: str | Path) -> GGUFInfo:
    """Refuse anything that is not a readable, well-formed GGUF before llama.cpp sees it; return its header.

    llama.cpp aborts the process on some malformed inputs; the bounded pure-Python reader checks the
    magic, version, every length and every tensor's bounds first (a directory, /dev/zero, a FIFO or a
    truncated file become ``InvalidModelFileError``).
    """
    try:
        st = os.stat(path)
        key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _checked:
        return _checked[key]
    info = read_gguf_info(path, keep_arrays=False)  # about a second for a 262k-token vocabulary
    if key is not None:
        with _progress_lock:
            if len(_checked) > 16:
                _checked.clear()
            _checked[key] = info
    return info


# Files already validated, by identity and modification: a reload of an unchanged file skips the walk.
_checked: dict[tuple[str, int, int, int, int], GGUFInfo] = {}


class ModelParams:
    """The ``llama_model_params`` of a load with some LoadOptions, with the arrays they point to kept
    alive (``tensor_split``, and the tensor overrides llama.cpp's fit may write)."""

    def __init__(self, native: Native, options: LoadOptions, *, vocab_only: bool = False) -> None:
        ffi, lib = native.ffi, native.lib
        self.ptr = p = ffi.new("struct llama_model_params *", lib.llama_model_default_params())
        p.n_gpu_layers = int(options.num_gpu)
        p.main_gpu = int(options.main_gpu)
        p.vocab_only = vocab_only
        p.use_extra_bufts = bool(options.repack)
        if options.use_mmap is not None:
            p.load_mode = lib.LLAMA_LOAD_MODE_MMAP if options.use_mmap else lib.LLAMA_LOAD_MODE_NONE
        # writable: llama.cpp's fit may fill them (a split over several devices, layer overrides)
        self.split = ffi.new("float[]", int(lib.llama_max_devices()))
        self.overrides = ffi.new("struct llama_model_tensor_buft_override[]",
                                 int(lib.llama_max_tensor_buft_overrides()))
        if options.tensor_split and not vocab_only:
            shares = options.tensor_split
            devices = native.split_devices()
            if not devices:
                raise InvalidRequestError("tensor_split needs GPUs or RPC workers to split the model over; "
                                          "this backend has only the CPU")
            if len(shares) > len(devices):
                names = ", ".join(f"{d.name} ({d.description})" for d in devices)
                raise InvalidRequestError(f"tensor_split has {len(shares)} shares but the model is split "
                                          f"over {len(devices)} device(s): {names}")
            if len(shares) > len(self.split):
                self.split = ffi.new("float[]", len(shares))
            for i, share in enumerate(shares):
                self.split[i] = float(share)
            p.tensor_split = self.split


class LlamaModel:
    """Owns one ``llama_model*``. Use from any thread for tokenization; free exactly once."""

    def __init__(self, native: Native, path: str | Path, options: LoadOptions = LoadOptions(),
                 progress: Callable[[float], bool] | None = None, *, vocab_only: bool = False,
                 params: ModelParams | None = None) -> None:
        self.native = native
        self.ffi, self.lib = ffi, lib = native.ffi, native.lib
        self.path = str(path)
        self.options = options
        check_gguf(self.path)
        for adapter in options.adapters:
            check_gguf(adapter)
        # the caller's parameters (fitted to memory limits), else the options' own
        self._params = params or ModelParams(native, options, vocab_only=vocab_only)
        params_ = self._params.ptr
        state = None
        handle = None
        if progress is not None:
            _install_progress(ffi)
            state = _Progress(progress)
            handle = ffi.new_handle(state)
            params_.progress_callback = lib.corral_progress_cb
            params_.progress_callback_user_data = handle
        library.clear_error()
        ptr = lib.llama_model_load_from_file(self.path.encode(), params_[0])
        if ptr == ffi.NULL:
            reason = library.last_error()
            if state is not None and state.error is not None:
                raise ModelLoadError(f"model load stopped: the progress callback raised {state.error!r}")
            if state is not None and state.cancelled:
                raise ModelLoadError("model load cancelled")
            if reason:
                raise ModelLoadError(f"llama.cpp could not load the model: {reason}")
            raise ModelLoadError(f"llama.cpp could not load {self.path} (unsupported architecture, "
                                 "damaged tensors or out of memory; see the log)")
        self.ptr = ptr
        self.vocab = lib.llama_model_get_vocab(ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self._freed = False
        self.adapters: list[Any] = []
        try:
            for adapter in options.adapters:
                a = lib.llama_adapter_lora_init(ptr, adapter.encode())
                if a == ffi.NULL:
                    raise ModelLoadError(f"cannot apply LoRA adapter {adapter}: not a LoRA for this model")
                self.adapters.append(a)
            self.info = self._info()
        except BaseException:
            self.free()
            raise

    # ---- metadata ------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text (arrays are not available through llama.cpp)."""
        buf = self.ffi.new("char[]", 256)
        n = self.lib.llama_model_meta_val_str(self.ptr, key.encode(), buf, 256)
        if n < 0:
            return None
        if n >= 256:
            buf = self.ffi.new("char[]", n + 1)
            self.lib.llama_model_meta_val_str(self.ptr, key.encode(), buf, n + 1)
        return self.ffi.string(buf).decode("utf-8", "replace")

    def metadata(self) -> dict[str, str]:
        """Every scalar metadata key and its value as text."""
        out = {}
        ffi, lib = self.ffi, self.lib
        for i in range(lib.llama_model_meta_count(self.ptr)):
            key = ffi.new("char[]", 256)
            if lib.llama_model_meta_key_by_index(self.ptr, i, key, 256) < 0:
                continue
            n = lib.llama_model_meta_val_str_by_index(self.ptr, i, ffi.NULL, 0)
            val = ffi.new("char[]", max(n, 0) + 1)
            lib.llama_model_meta_val_str_by_index(self.ptr, i, val, max(n, 0) + 1)
            out[ffi.string(key).decode("utf-8", "replace")] = ffi.string(val).decode("utf-8", "replace")
        return out

    def _info(self) -> ModelInfo:
        ffi, lib, ptr = self.ffi, self.lib, self.ptr
        arch = self.meta("general.architecture") or ""
        pooling_raw = self.meta(f"{arch}.pooling_type")
        pooling = _POOLING.get(int(pooling_raw), "none") if pooling_raw and pooling_raw.isdigit() else "none"
        tmpl = lib.llama_model_chat_template(ptr, ffi.NULL)
        bos, eos = int(lib.llama_vocab_bos(self.vocab)), int(lib.llama_vocab_eos(self.vocab))
        return ModelInfo(
            architecture=arch,
            n_params=int(lib.llama_model_n_params(ptr)),
            size=int(lib.llama_model_size(ptr)),
            n_ctx_train=int(lib.llama_model_n_ctx_train(ptr)),
            n_ctx=int(self.options.num_ctx),
            n_parallel=int(self.options.num_parallel),
            n_embd=int(lib.llama_model_n_embd(ptr)),
            n_vocab=self.n_vocab,
            file_type=file_type_name(int(lib.llama_model_ftype(ptr))),
            chat_template=None if tmpl == ffi.NULL else ffi.string(tmpl).decode("utf-8", "replace"),
            bos_token=self.token_text(bos) if bos >= 0 else "",
            eos_token=self.token_text(eos) if eos >= 0 else "",
            add_bos=bool(lib.llama_vocab_get_add_bos(self.vocab)),
            pooling=pooling,
            has_encoder=bool(lib.llama_model_has_encoder(ptr)),
        )

    # ---- tokens --------------------------------------------------------------------------------
    def _check_tokens(self, tokens: list[int]) -> None:
        # An id outside the vocabulary makes llama.cpp throw std::out_of_range through C: an abort.
        n = self.n_vocab
        for t in tokens:
            if not isinstance(t, int) or t < 0 or t >= n:
                raise InvalidRequestError(f"token id {t!r} is outside the vocabulary (0..{n - 1})")

    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS/EOS as the model wants,
        ``parse_special`` turns control-token text (``<start_of_turn>``) into those tokens."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        if len(data) > MAX_TEXT_BYTES:
            raise InvalidRequestError("text too long to tokenize (over 2 GiB)")
        lib, ffi = self.lib, self.ffi
        cap = len(data) + 8  # a token is never shorter than a byte, plus BOS/EOS
        buf = ffi.new("llama_token[]", cap)
        n = lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            if n == -(1 << 31):
                raise InvalidRequestError("text too long to tokenize")
            cap = -n
            buf = ffi.new("llama_token[]", cap)
            n = lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
            if n < 0:
                raise BackendError(f"llama_tokenize failed ({n})")
        return list(ffi.unpack(buf, n))

    def token_bytes(self, token: int, special: bool = True) -> bytes:
        """Raw bytes of one token's piece (may be part of a UTF-8 character)."""
        self._check_tokens([token])
        buf = self.ffi.new("char[]", 64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = self.ffi.new("char[]", -n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return bytes(self.ffi.buffer(buf, n)) if n > 0 else b""

    def token_text(self, token: int) -> str:
        return self.token_bytes(token, True).decode("utf-8", "replace")

    def detokenize(self, tokens: list[int], render_special: bool = False) -> str:
        """Text of whole tokens; invalid UTF-8 at the edges becomes U+FFFD."""
        if not tokens:
            return ""
        self._check_tokens(tokens)
        ffi, lib = self.ffi, self.lib
        arr = ffi.new("llama_token[]", tokens)
        cap = max(64, len(tokens) * 8)
        buf = ffi.new("char[]", cap)
        n = lib.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, render_special)
        if n < 0:
            cap = -n
            buf = ffi.new("char[]", cap)
            n = lib.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, render_special)
        return bytes(ffi.buffer(buf, max(n, 0))).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    def is_control(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_control(self.vocab, token))

    # ---- adapters and lifetime -----------------------------------------------------------------
    def apply_adapters(self, ctx: Any) -> None:
        """Attach this model's LoRA adapters (scale 1.0) to a context created from it."""
        if not self.adapters:
            return
        ffi = self.ffi
        arr = ffi.new("struct llama_adapter_lora *[]", self.adapters)
        scales = ffi.new("float[]", [1.0] * len(self.adapters))
        rc = self.lib.llama_set_adapters_lora(ctx, arr, len(self.adapters), scales)
        if rc != 0:
            raise ModelLoadError(f"llama.cpp refused the LoRA adapters ({rc})")

    @property
    def freed(self) -> bool:
        return self._freed

    def free(self) -> None:
        """Free the adapters and the model; a second call does nothing."""
        if getattr(self, "_freed", True):
            return
        self._freed = True
        for a in self.adapters:
            self.lib.llama_adapter_lora_free(a)
        self.adapters = []
        self.lib.llama_model_free(self.ptr)
        self.ptr = self.ffi.NULL
