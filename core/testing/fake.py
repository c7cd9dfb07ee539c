"""The fake backend plugin: instant, deterministic and scriptable, for tests of everything above it.

Register it in any process with ``CORRAL_EXTRA_PLUGINS=corral.testing.fake`` (the module's ``plugin``
object) or in-process with ``host.register(FakeBackend(), "fake")``. It loads any readable
GGUF header (no weights), tokenizes UTF-8 bytes (id = byte + 3; 0 unk, 1 BOS, 2 EOS; the model's
control tokens from 259 up), and replies deterministically. Replies can be scripted across processes
with ``CORRAL_FAKE_SCRIPT=<rules.json>`` or in-process with ``FakeBackend.enqueue``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator

import msgspec

from corral.config import Config, fake_script
from corral.errors import (
    BackendError,
    CapabilityError,
    ContextLengthError,
    GenerationCancelledError,
    InvalidRequestError,
    ModelLoadError,
)
from corral.gguf import file_type_name, read_gguf_info
from corral.hookspecs import hookimpl
from corral.memory import host_memory
from corral.testing.fakemedia import FakeProjector, expand, load_projector
from corral.testing.fakescript import FakeCall, Rule, biased, default_reply, load_rules
from corral.textstream import StopMatcher, Utf8Decoder
from corral.types import (
    HOST,
    MAX_TOP_LOGPROBS,
    BackendInfo,
    CancelToken,
    DeviceInfo,
    DeviceMemory,
    EmbeddingResult,
    GenerationRequest,
    GenerationStats,
    LoadOptions,
    MemoryEstimate,
    MemoryUsage,
    ModelHandle,
    ModelInfo,
    RerankResult,
    TokenEvent,
    TokenLogprob,
)

__all__ = ["BYTE_OFFSET", "BOS", "EOS", "FakeBackend", "FakeCall", "Rule", "default_reply", "load_rules"]

UNK, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3  # token id of byte b is b + 3
FIRST_SPECIAL = BYTE_OFFSET + 256
DEFAULT_EMBED_DIM = 64
# The fake's memory model, on the host (HOST): the file's tensor data as weights, this much KV cache
# per context cell (num_ctx x num_parallel cells) and a fixed compute buffer.
FAKE_KV_BYTES_PER_CELL = 1024
FAKE_COMPUTE_BYTES = 1 << 20
QUANT_TYPES = {"q4_k_m": 15, "q4_k_s": 14, "q8_0": 7}  # accepted targets -> general.file_type
QUANT_SOURCES = {0, 1, 32}  # F32, F16, BF16

class _Model:
    """Per-handle state: the special-token table, the last sequence (for cached_tokens)."""

    def __init__(self, handle: ModelHandle, specials: list[str], bos_text: str, eos_text: str) -> None:
        self.handle = handle
        self.specials = specials  # id FIRST_SPECIAL + i
        self.special_ids = {s: FIRST_SPECIAL + i for i, s in enumerate(specials)}
        self.special_ids.setdefault(bos_text, BOS)
        self.special_ids.setdefault(eos_text, EOS)
        self.names = {BOS: bos_text, EOS: eos_text, UNK: "<unk>"}
        alts = sorted(self.special_ids, key=len, reverse=True)
        self.special_re = re.compile("|".join(re.escape(s) for s in alts)) if alts else None
        self.last_seq: list[int] = []
        self.projector: FakeProjector | None = None  # set when loaded with LoadOptions.projector
        self.lock = threading.Lock()
        self.embed_table: dict[int, list[float]] = {}


class FakeBackend:
    """The fake backend as an object: register one per test, script it with ``enqueue``."""

    def __init__(self, name: str = "fake", priority: int = 1, *, usable: bool = True,
                 plugin: str = "") -> None:
        self.name, self.priority, self.usable = name, priority, usable
        self.plugin = plugin  # "" lets the core fill in the distribution that shipped the plugin
        self.history: list[FakeCall] = []
        self._queue: list[Rule] = []
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # ---- in-process scripting --------------------------------------------------------------------
    def enqueue(self, reply: str | None = None, *, delay: float = 0.0, error: str | None = None,
                crash: bool = False, error_after: int | None = None, match: str = "") -> None:
        """Queue a behaviour for the next generate call (queued rules are used once, in order)."""
        with self._lock:
            self._queue.append(Rule(match=match, reply=reply, delay=delay, error=error, crash=crash,
                                    error_after=error_after))

    def _record(self, call: FakeCall) -> None:
        with self._lock:
            self.history.append(call)

    def _rule_for(self, prompt_text: str) -> Rule | None:
        with self._lock:
            for i, rule in enumerate(self._queue):
                if rule.match in prompt_text:
                    return self._queue.pop(i)
        script = fake_script()
        if script:
            for rule in load_rules(script):
                if rule.match in prompt_text:
                    return rule
        return None

    def _model(self, handle: ModelHandle) -> _Model:
        model = self._models.get(handle.id)
        if model is None:
            raise InvalidRequestError(f"model {handle.id} is not loaded in the {self.name} backend")
        return model

    # ---- hooks -----------------------------------------------------------------------------------
    @hookimpl
    def corral_probe_backend(self, config: Config) -> BackendInfo:
        return BackendInfo(
            name=self.name, priority=self.priority, usable=self.usable,
            reason="test backend: deterministic fake replies, no inference" if self.usable
            else "disabled for this test",
            devices=[DeviceInfo(name=HOST, description="fake device (the host's RAM)", type="cpu",
                                memory_total=host_memory()[1], memory_free=host_memory()[0])],
            plugin=self.plugin,
        )

    @staticmethod
    def _memory(path: str, options: LoadOptions) -> DeviceMemory:
        info = read_gguf_info(path)
        free, total = host_memory()
        return DeviceMemory(device=HOST, type="cpu", weights=max(0, info.file_size - info.tensor_data_offset),
                            kv_cache=options.num_ctx * max(1, options.num_parallel) * FAKE_KV_BYTES_PER_CELL,
                            compute=FAKE_COMPUTE_BYTES, free=free, total=total)

    @hookimpl
    def corral_estimate_memory(self, path: str, options: LoadOptions) -> MemoryEstimate:
        self._record(FakeCall(op="estimate", path=path, options=options))
        return MemoryEstimate(devices=(self._memory(path, options),), n_layer=1)

    @hookimpl
    def corral_load_model(self, path: str, options: LoadOptions, progress: Callable[[float], bool] | None,
                          memory_limits: dict[str, int] | None) -> ModelHandle:
        self._record(FakeCall(op="load", path=path, options=options))
        if options.num_ctx <= 0:
            raise ModelLoadError(f"num_ctx {options.num_ctx} reached the backend (the scheduler picks it)")
        if progress is not None and progress(0.0) is False:
            raise ModelLoadError("model load cancelled")
        script = fake_script()
        for rule in load_rules(script) if script else []:
            if rule.stall_load > 0 and rule.match in path:
                time.sleep(rule.stall_load)
        info = read_gguf_info(path)  # raises InvalidModelFileError for non-GGUF and truncated files
        projector = load_projector(options.projector) if options.projector and not options.embedding else None
        # half way, as a real backend reports the weights it has read (the header is all the fake reads)
        if progress is not None and progress(0.5) is False:
            raise ModelLoadError("model load cancelled")
        kv = info.kv
        arch = info.architecture or "unknown"
        tokens = kv.get("tokenizer.ggml.tokens")
        types = kv.get("tokenizer.ggml.token_type")
        specials: list[str] = []
        bos_text, eos_text = "<s>", "</s>"
        if isinstance(tokens, list) and isinstance(types, list) and len(tokens) == len(types):
            bos_id, eos_id = kv.get("tokenizer.ggml.bos_token_id"), kv.get("tokenizer.ggml.eos_token_id")
            if isinstance(bos_id, int) and 0 <= bos_id < len(tokens):
                bos_text = tokens[bos_id]
            if isinstance(eos_id, int) and 0 <= eos_id < len(tokens):
                eos_text = tokens[eos_id]
            # control tokens (type 3) become special ids, except those already mapped
            specials = [t for t, ty in zip(tokens, types, strict=True)
                        if ty == 3 and t and t not in (bos_text, eos_text, "<unk>")]
        n_embd = kv.get(f"{arch}.embedding_length")
        n_embd = n_embd if isinstance(n_embd, int) and 0 < n_embd <= 65536 else DEFAULT_EMBED_DIM
        n_train = kv.get(f"{arch}.context_length")
        n_train = n_train if isinstance(n_train, int) and n_train > 0 else 2048
        template = kv.get("tokenizer.chat_template")
        size = max(0, info.file_size - info.tensor_data_offset)
        minfo = ModelInfo(
            architecture=arch, n_params=info.n_params, size=size, n_ctx_train=n_train,
            n_ctx=options.num_ctx, n_parallel=options.num_parallel, n_embd=n_embd,
            n_vocab=FIRST_SPECIAL + len(specials),
            file_type=file_type_name(kv["general.file_type"]) if "general.file_type" in kv else "",
            chat_template=template if isinstance(template, str) else None,
            bos_token=bos_text, eos_token=eos_text,
            add_bos=bool(kv.get("tokenizer.ggml.add_bos_token", True)),
            pooling=_pooling(kv, arch, options.embedding),
            vision=bool(projector and projector.vision), audio=bool(projector and projector.audio),
        )
        handle = ModelHandle(id=f"{self.name}-{next(self._ids)}", backend=self.name, path=path,
                             options=options, info=minfo, memory=self._usage(path, options, memory_limits),
                             devices=(HOST,))
        with self._lock:
            self._models[handle.id] = _Model(handle, specials, bos_text, eos_text)
            self._models[handle.id].projector = projector
        if progress is not None and progress(1.0) is False:
            self.corral_unload(handle)
            raise ModelLoadError("model load cancelled")
        return handle

    def _usage(self, path: str, options: LoadOptions, limits: dict[str, int] | None) -> MemoryUsage:
        d = self._memory(path, options)
        if limits and HOST in limits and d.used > limits[HOST]:
            raise ModelLoadError(f"the fake model needs {d.used} bytes; it may take {limits[HOST]}")
        return MemoryUsage(total=d.used, vram=0, devices=(d,), layers=0)

    @hookimpl
    def corral_tokenize(self, handle: ModelHandle, text: str, add_special: bool,
                        parse_special: bool) -> list[int]:
        model = self._model(handle)
        out: list[int] = [BOS] if add_special and handle.info.add_bos else []
        pos = 0
        if parse_special and model.special_re is not None:
            for m in model.special_re.finditer(text):
                out += [b + BYTE_OFFSET for b in text[pos : m.start()].encode()]
                out.append(model.special_ids[m.group()])
                pos = m.end()
        out += [b + BYTE_OFFSET for b in text[pos:].encode()]
        return out

    def _piece(self, model: _Model, token: int, render_special: bool) -> bytes:
        if BYTE_OFFSET <= token < FIRST_SPECIAL:
            return bytes((token - BYTE_OFFSET,))
        if not 0 <= token < model.handle.info.n_vocab:
            raise InvalidRequestError(
                f"token id {token} is out of range (the vocabulary has {model.handle.info.n_vocab})")
        if not render_special:
            return b""
        text = model.names.get(token) or model.specials[token - FIRST_SPECIAL]
        return text.encode()

    @hookimpl
    def corral_detokenize(self, handle: ModelHandle, tokens: list[int], render_special: bool) -> str:
        model = self._model(handle)
        data = b"".join(self._piece(model, t, render_special) for t in tokens)
        return data.decode("utf-8", errors="replace")

    @hookimpl
    def corral_token_pieces(self, handle: ModelHandle, tokens: list[int]) -> list[bytes]:
        model = self._model(handle)
        return [self._piece(model, t, True) for t in tokens]

    @hookimpl
    def corral_generate(self, handle: ModelHandle, request: GenerationRequest,
                        cancel: CancelToken) -> Iterator[TokenEvent]:
        model = self._model(handle)
        # Media become tokens (counted, cached by their bytes' hash) and tags in the prompt's text.
        prompt, prompt_text = expand(model.projector, request,
                                     lambda tokens: self.corral_detokenize(handle, tokens, True))
        self._record(FakeCall(op="generate", handle=handle.id, text=prompt_text, request=request))
        for token in request.sampling.logit_bias:  # as the llama.cpp sampler checks them
            if not 0 <= token < handle.info.n_vocab:
                raise InvalidRequestError(
                    f"logit_bias: token {token} is not in the vocabulary (0..{handle.info.n_vocab - 1})")
        n_ctx = handle.info.n_ctx
        truncated = False
        if len(prompt) >= n_ctx:
            if not request.shift or request.media:
                raise ContextLengthError(
                    f"the prompt ({len(prompt)} tokens) does not fit the context ({n_ctx})")
            truncated = True
        rule = self._rule_for(prompt_text)
        return self._stream(model, request, prompt, cancel, prompt_text, rule, truncated)

    def _reply_text(self, request: GenerationRequest, prompt_text: str, rule: Rule | None) -> str:
        lazy = request.sampling.json_schema
        if lazy is not None and lazy.lazy and request.sampling.grammar:  # free text, constrained calls
            from corral.testing.gbnf import constrain_calls

            free = msgspec.structs.replace(request.sampling, grammar=None, json_schema=None)
            text = self._reply_text(msgspec.structs.replace(request, sampling=free), prompt_text, rule)
            return constrain_calls(text, lazy.opener, lazy.closer, request.sampling.grammar,
                                   seed=hash_text(f"{prompt_text}\x00{free.seed}"))
        if rule is not None and rule.reply is not None:
            return rule.reply
        if request.media:  # an answer that depends on each image from its first bytes, as a model's would
            seen = re.findall(r"\[(audio|image) (\w+) ?(\d+x\d+)? (\w{8})\]", prompt_text)
            described = "; ".join(f"{h} is a {fmt} {kind}" + (f" of {size}" if size else "")
                                  for kind, fmt, size, h in seen)
            return f"{described}. " + default_reply(prompt_text, request.sampling.seed,
                                                    request.sampling.temperature)
        s = request.sampling
        if s.grammar:
            from corral.testing.gbnf import sample_grammar

            seed = s.seed if s.temperature > 0 else 0
            return sample_grammar(s.grammar, seed=hash_text(f"{prompt_text}\x00{seed}"))
        return default_reply(prompt_text, s.seed, s.temperature)

    def _stream(self, model: _Model, request: GenerationRequest, prompt: list[int], cancel: CancelToken,
                prompt_text: str, rule: Rule | None, truncated: bool) -> Iterator[TokenEvent]:
        t0 = time.perf_counter_ns()
        with model.lock:
            cached = _common_prefix(model.last_seq, prompt)
        cached = min(cached, max(0, len(prompt) - 1))  # the last prompt token is always evaluated
        t1 = time.perf_counter_ns()
        reply = self._reply_text(request, prompt_text, rule)
        ids = biased([b + BYTE_OFFSET for b in reply.encode()], request.sampling.logit_bias)
        limit = request.num_predict if request.num_predict >= 0 else 10 * model.handle.info.n_ctx
        if not request.shift or request.media:
            limit = min(limit, max(0, model.handle.info.n_ctx - len(prompt)))
        decoder, stops = Utf8Decoder(), StopMatcher(request.stop)
        emitted: list[int] = []
        finish = "stop"
        failing = rule if rule is not None and (rule.error or rule.crash) else None
        fail_at = None
        if failing is not None:
            fail_at = failing.error_after if failing.error_after is not None else 0
        ended = False  # by a stop string, the token limit or cancellation rather than the reply's end
        for i, tok in enumerate(ids):
            if failing is not None and fail_at is not None and i >= fail_at:
                _fail(failing)
            if cancel.cancelled or (rule is not None and rule.delay > 0 and cancel.wait(rule.delay)):
                ended = True
                break
            if len(emitted) >= limit:
                finish, ended = "length", True
                break
            emitted.append(tok)
            text, stopped = stops.feed(decoder.feed(bytes((tok - BYTE_OFFSET,))))
            lp, tops = _logprobs(tok, request) if request.logprobs else (None, None)
            yield TokenEvent(token=tok, text=text, logprob=lp, top_logprobs=tops)
            if stopped:
                ended = True
                break
        if failing is not None and not ended:  # error_after at or beyond the reply's length
            _fail(failing)
        tail = "" if stops.stopped else stops.feed(decoder.flush())[0]
        tail += stops.flush()
        with model.lock:
            model.last_seq = prompt + emitted
        t2 = time.perf_counter_ns()
        stats = GenerationStats(prompt_tokens=len(prompt), cached_tokens=cached,
                                prompt_eval_ns=max(1, t1 - t0), eval_count=len(emitted),
                                eval_ns=max(1, t2 - t1), truncated=truncated)
        yield TokenEvent(token=-1, text=tail, finish_reason=finish, stats=stats,
                         stop_string=stops.matched or "")

    @hookimpl
    def corral_embed(self, handle: ModelHandle, inputs: list[list[int]], normalize: bool,
                     cancel: CancelToken) -> EmbeddingResult:
        model = self._model(handle)
        self._record(FakeCall(op="embed", handle=handle.id))
        dim = handle.info.n_embd
        out: list[list[float]] = []
        for tokens in inputs:
            if cancel.cancelled:
                raise GenerationCancelledError("embedding cancelled: the client disconnected")
            if not tokens:
                raise InvalidRequestError("cannot embed an empty input")
            # bag of per-token random vectors: inputs sharing tokens point in similar directions
            vec = [0.0] * dim
            for t in tokens:
                row = model.embed_table.get(t)
                if row is None:
                    rng = random.Random(t * 7919 + dim)
                    row = model.embed_table.setdefault(t, [rng.gauss(0.0, 1.0) for _ in range(dim)])
                vec = [a + b for a, b in zip(vec, row, strict=True)]
            vec = [v / len(tokens) for v in vec]
            if normalize:
                norm = math.sqrt(sum(v * v for v in vec)) or 1.0
                vec = [v / norm for v in vec]
            out.append(vec)
        return EmbeddingResult(embeddings=out, prompt_tokens=sum(len(t) for t in inputs))

    @hookimpl
    def corral_rerank(self, handle: ModelHandle, query: str, documents: list[str]) -> RerankResult:
        """Scores from word overlap (the share of the query's words in the document) plus a small
        per-pair hash, so ties are rare and the same pair always scores the same."""
        self._model(handle)  # an unknown handle is an error
        self._record(FakeCall(op="rerank", handle=handle.id, text=query))
        if handle.info.pooling != "rank":
            raise CapabilityError(f"model {handle.path} is not a reranker")
        words = set(query.lower().split())
        scores, tokens = [], 0
        for doc in documents:
            n = len(self.corral_tokenize(handle, query, True, False)) + len(doc.encode()) + 1
            if n > handle.info.n_ctx:
                raise ContextLengthError(f"a query/document pair has {n} tokens, more than the context of "
                                         f"{handle.info.n_ctx}")
            tokens += n
            overlap = len(words & set(doc.lower().split())) / max(1, len(words))
            scores.append(overlap + (hash_text(f"{query}\x00{doc}") % 1000) / 1e6)
        return RerankResult(scores=scores, prompt_tokens=tokens)

    @hookimpl
    def corral_unload(self, handle: ModelHandle) -> bool:
        self._record(FakeCall(op="unload", handle=handle.id))
        with self._lock:
            self._models.pop(handle.id, None)
        return True

    @hookimpl
    def corral_quantize(self, source: str, destination: str, file_type: str,
                        progress: Callable[[float], bool] | None) -> bool:
        """Copy ``source`` and relabel its ``general.file_type``; the tensors stay as they were."""
        self._record(FakeCall(op="quantize", path=source, text=file_type))
        target = QUANT_TYPES.get(file_type.lower())
        if target is None:
            raise InvalidRequestError(
                f"unsupported quantization type {file_type!r}; use one of q4_K_M, q4_K_S, q8_0")
        info = read_gguf_info(source, keep_arrays=False)
        src_type = info.kv.get("general.file_type", 0)
        if src_type not in QUANT_SOURCES:
            raise InvalidRequestError(
                f"cannot quantize a {file_type_name(src_type)} model; only F32, F16 and BF16 sources")
        if progress is not None and progress(0.0) is False:
            return False
        tmp = destination + ".part"
        shutil.copyfile(source, tmp)
        if "general.file_type" in info.kv:
            import gguf

            reader = gguf.GGUFReader(tmp, "r+")
            field = reader.fields["general.file_type"]
            field.parts[field.data[0]][0] = target
            del reader
        os.replace(tmp, destination)
        if progress is not None:
            progress(1.0)
        return True


def hash_text(text: str) -> int:
    """A process-independent 63-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _pooling(kv: dict[str, object], arch: str, embedding: bool) -> str:
    """A GGUF pooling type 4 is a reranker's rank head; otherwise embeddings are mean-pooled."""
    if kv.get(f"{arch}.pooling_type") == 4:
        return "rank"
    return "mean" if embedding else "none"


def _fail(rule: Rule) -> None:
    if rule.crash:
        os._exit(70)  # no cleanup, no exception: exactly like a native crash of the runner
    raise BackendError(rule.error or "fake backend error")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _logprobs(tok: int, request: GenerationRequest) -> tuple[TokenLogprob, list[TokenLogprob] | None]:
    """Made-up but well-formed: the chosen token is the most likely; alternatives are neighbours."""
    def entry(t: int, lp: float) -> TokenLogprob:
        b = bytes((t - BYTE_OFFSET,))
        return TokenLogprob(token=t, text=b.decode("utf-8", errors="replace"), bytes=list(b), logprob=lp)

    chosen = entry(tok, -0.05 - (tok % 7) * 0.01)
    n = max(0, min(MAX_TOP_LOGPROBS, request.top_logprobs))
    if not n:
        return chosen, None
    tops = [chosen]
    for k in range(1, n):
        alt = BYTE_OFFSET + (tok - BYTE_OFFSET + k) % 256
        tops.append(entry(alt, chosen.logprob - 1.0 * k))
    return chosen, tops


# ---- the plugin object CORRAL_EXTRA_PLUGINS=corral.testing.fake registers ---------------------------
plugin = FakeBackend(plugin="corral")
