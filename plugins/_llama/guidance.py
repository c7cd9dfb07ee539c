"""JSON-schema constraints compiled by llguidance: the model's tokenizer built once, compiled grammars
cached, and per sequence a matcher that checks one sampled token or computes the full mask."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from corral.types import JsonConstraint

try:  # an optional speed-up: without it, schemas run on llama.cpp's GBNF sampler as before
    import llguidance as llg
except ImportError:  # pragma: no cover - the wheel is a dependency of the plugin
    llg = None

__all__ = ["Guidance", "Guide", "lark_source"]

log = logging.getLogger("corral.llama")

# The GBNF conversion's `space ::= | " " | "\n" [ \t]{0,20}`: at most one space or one indented
# newline between tokens, so a model cannot fill its answer with whitespace.
_WS = r"(?: |\n[ \t]{0,20})"
_OPTIONS = {"whitespace_pattern": _WS + "?", "coerce_one_of": True}
_CACHE_MAX = 64  # compiled grammars kept per model


_META = set("\\.+*?()|[]{}^$#&-~/")


def _re_escape(s: str) -> str:
    """``s`` as a literal inside an llguidance /regex/ (only metacharacters escaped: in its regex
    syntax an escaped ``<`` would be a word boundary)."""
    return "".join("\\" + c if c in _META else c for c in s)


def lark_source(c: JsonConstraint, special: Any = lambda text: None) -> str:
    """The llguidance grammar for ``c``: the schema, then the GBNF's trailing space, inside a tool
    call's opener and closer when it has them; for a thinking model the reasoning block first (as
    ``with_think_block`` writes it in GBNF).

    ``c.lazy``: only what follows the opener (the sampler watches the free text for it).

    ``special(text)`` names an open marker or opener that is one special token as ``<[id]>`` (None:
    plain text). A close marker must be text: llguidance (1.9) refuses a special token after free
    text, so ``Guidance.guide`` leaves such models on the GBNF path.
    """
    schema = json.loads(c.schema)
    if isinstance(schema, dict):
        schema = {**schema, "x-guidance": _OPTIONS}
    lines = [f"answer: %json {json.dumps(schema, ensure_ascii=False)}", f"TAIL: /{_WS}/"]
    body = "answer TAIL?"
    if c.lazy:  # the language after the opener: the sampler arms it when the opener appears
        if c.bracketed:
            body = f'"[" {body} "]"'
        elif c.opener:
            body = f"TAIL? {body}" + (" " + json.dumps(c.closer, ensure_ascii=False) if c.closer else "")
        lines.insert(0, '%llguidance {"no_forcing": true}')
        return "\n".join([f"start: {body}", *lines]) + "\n"
    if c.opener:
        opener = special(c.opener) or json.dumps(c.opener, ensure_ascii=False)
        # as tool_call_grammar: `opener "[" call "]"`, or `opener space call closer`
        body = f'{opener} "[" {body} "]"' if c.bracketed else f"{opener} TAIL? {body}"
        if c.closer and not c.bracketed:
            body += " " + json.dumps(c.closer, ensure_ascii=False)
    # no_forcing: where the grammar forces text, every token that spells a piece of it stays in the
    # mask (llguidance would keep only its own tokenization's), as in the GBNF sampler, so that a
    # refused sample falls back to the same candidates there and greedy output stays the same.
    lines.insert(0, '%llguidance {"no_forcing": true}')
    if c.think_markers is None:
        return "\n".join([f"start: {body}", *lines]) + "\n"
    open_, close = c.think_markers
    c0, c1 = (_re_escape(x) for x in close[:2])
    char = f"(?:[^{c0}]|{c0}[^{c1}])"
    open_item = special(open_) or json.dumps(open_, ensure_ascii=False)
    # One lexeme up to and including the close marker: the lexer is greedy, so a separate text
    # lexeme would swallow the marker's first character and never give it back.
    think = [f"think_body: /{char}*{_re_escape(close)}/"]
    head = "think_body THINK_WS?" if c.think_inside else f"({open_item} think_body THINK_WS?)?"
    return "\n".join([f"start: {head} {body}", *think, "THINK_WS: /[ \\t\\n]{1,8}/", *lines]) + "\n"


class Guidance:
    """One model's llguidance tokenizer (built once, at load: ``prepare``) and its cache of compiled
    grammars. Safe to call from any request thread; never called on an event loop."""

    def __init__(self, native: Any, model: Any) -> None:
        self._ffi, self._lib = native.ffi, native.lib
        self._model = model
        self._lock = threading.Lock()
        self._tok: Any = None
        self._failed = False
        self._cache: OrderedDict[JsonConstraint, Any] = OrderedDict()

    @property
    def available(self) -> bool:
        return llg is not None and not self._failed

    def _tokenizer(self) -> Any:
        """The LLTokenizer of this model's vocabulary, as llama.cpp's own llguidance binding builds it:
        plain pieces, special tokens as 0xFF + their text, every end-of-generation token as EOS."""
        ffi, lib, vocab = self._ffi, self._lib, self._model.vocab
        n = int(lib.llama_vocab_n_tokens(vocab))
        lens = ffi.new("int32_t[]", n)
        need = -int(lib.corral_vocab_pieces(vocab, ffi.NULL, 0, lens))
        buf = ffi.new("char[]", max(1, need))
        got = int(lib.corral_vocab_pieces(vocab, buf, need, lens))
        data = ffi.buffer(buf, got)[:]
        ends = np.cumsum(np.frombuffer(ffi.buffer(lens, 4 * n), dtype=np.int32), dtype=np.int64)
        starts = ends - np.frombuffer(ffi.buffer(lens, 4 * n), dtype=np.int32)
        tokens = [data[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        eog = [t for t in range(n) if lib.llama_vocab_is_eog(vocab, t)]
        eos = int(lib.llama_vocab_eos(vocab))
        if not eog:
            eog = [eos] if eos >= 0 else [0]
        fptr = int(ffi.cast("uintptr_t", ffi.addressof(lib, "llama_tokenize")))
        # slices=[]: the default slicer triples the build (about 2 s of held GIL for a 262k
        # vocabulary); masks are only needed when a sampled token is refused, so it is not worth it.
        return llg.LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=int(ffi.cast("uintptr_t", vocab)),
                                             tokenize_fptr=fptr, eos_token=eog, slices=[])

    def _special(self, text: str) -> str | None:
        ids = self._model.tokenize(text, add_special=False, parse_special=True)
        if len(ids) == 1 and self._tok.is_special_token(ids[0]):
            return f"<[{ids[0]}]>"
        return None

    def prepare(self) -> None:
        """Build the tokenizer now. The build holds the GIL for up to a few seconds on a 262k
        vocabulary, so the model's loader calls this before the model serves: built on the first
        constrained request instead, it would stall every stream of the model meanwhile."""
        with self._lock:
            self._ensure_tokenizer()

    def _ensure_tokenizer(self) -> bool:
        """Whether the tokenizer is there (built now if not); call with the lock held."""
        if self._tok is None and self.available:
            try:
                self._tok = self._tokenizer()
            except Exception as exc:  # an odd vocabulary: keep the GBNF path for this model
                log.warning("llguidance cannot use this model's vocabulary (%s); using GBNF", exc)
                self._failed = True
        return self._tok is not None

    def guide(self, c: JsonConstraint) -> Guide | None:
        """A fresh matcher for ``c``, or None where llguidance cannot take it (the caller then uses the
        GBNF form, which means the same)."""
        if not self.available:
            return None
        key = c
        with self._lock:
            if not self._ensure_tokenizer():
                return None
            if c.think_markers and not c.lazy and self._special(c.think_markers[1]):
                return None
            proto = self._cache.get(key)
            if proto is not None:
                self._cache.move_to_end(key)
        if proto is None:
            try:
                source = llg.LLMatcher.grammar_from_lark(lark_source(c, self._special))
                proto = llg.LLMatcher(self._tok, source, log_level=0)  # compiles with the GIL released
            except (ValueError, RuntimeError) as exc:  # what it cannot express: the GBNF form can
                log.info("llguidance cannot compile a constraint (%s); using its GBNF form", exc)
                return None
            if proto.is_error():
                log.info("llguidance refused a schema (%s); using its GBNF form", proto.get_error())
                return None
            with self._lock:
                self._cache[key] = proto
                while len(self._cache) > _CACHE_MAX:
                    self._cache.popitem(last=False)
        return Guide(proto.deep_copy(), int(self._tok.vocab_size))


class Guide:
    """One sequence's llguidance matcher: checks a sampled token, or lists every allowed one."""

    __slots__ = ("_m", "_mask", "n_vocab")

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        self._m = matcher
        self.n_vocab = n_vocab
        self._mask: np.ndarray | None = None

    def copy(self) -> Guide:
        """A matcher in this one's state, fed separately."""
        return Guide(self._m.deep_copy(), self.n_vocab)

    def allows(self, token: int) -> bool:
        return bool(self._m.validate_tokens([token]) == 1)

    def accept(self, token: int) -> None:
        self._m.consume_token(token)

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of ``tokens``, from the first, the grammar allows in a row (nothing is consumed)."""
        return int(self._m.validate_tokens(tokens)) if tokens else 0

    def forced_bytes(self) -> bytes:
        """The text every allowed continuation starts with (b"" where the next byte is free)."""
        return bytes(self._m.compute_ff_bytes())

    def allowed(self) -> np.ndarray:
        """Ids of every token the grammar allows next (the mask is computed without the GIL)."""
        if self._mask is None:
            self._mask = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)
        mask = self._mask
        self._m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[: self.n_vocab]
        return np.flatnonzero(bits).astype(np.int32)

    @property
    def done(self) -> bool:
        """The text so far is a whole document (end of generation is allowed now)."""
        return bool(self._m.is_accepting())

    @property
    def error(self) -> str:
        return str(self._m.get_error()) if self._m.is_error() else ""

