"""Per-sequence llama.cpp sampler chains built from SamplingParams, and logprobs from raw logits."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from corral.errors import GrammarError, InvalidRequestError
from corral.lazycall import CallWatch
from corral.types import MAX_TOP_LOGPROBS, SamplingParams, TokenLogprob

from .guidance import Guide

__all__ = ["LazyCall", "SamplerChain", "logprobs_from_logits"]
# llama.h: LLAMA_DEFAULT_SEED; dist() draws a random seed when given it.
_RANDOM_SEED = 0xFFFFFFFF
_MAX_REDRAWS = 64  # free-text tokens refused at a call's opener before the request fails
_CAND_MAX = 2048  # most candidates handed to the chain by the top-k pre-selection
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


@dataclass
class LazyCall:
    """A lazy tool-call constraint (``JsonConstraint.lazy``): what the sampler needs to arm it."""

    watch: CallWatch  # finds the opener in the sampled text
    piece: Callable[[int], bytes]  # a token's text (special tokens as their text)
    tokenize: Callable[[str], list[int]]  # for the text after the opener inside the opening token
    guide: Guide | None  # llguidance's matcher of the call, never fed (each call gets a copy); None:
    # the GBNF of ``SamplingParams.grammar`` (what follows the opener) on llama.cpp's grammar sampler
    eog: int  # an end-of-generation token: the GBNF sampler allows it once the call is complete


class SamplerChain:
    """One sequence's llama.cpp sampler chain; owns the native chain and frees it on ``close``.

    Order (as llama.cpp's common sampler does): logit bias, penalties, top_k, typical_p, top_p, min_p,
    temperature, dist(seed) — or greedy when temperature <= 0. A constraint (llguidance ``Guide`` for
    schemas, llama.cpp's grammar sampler for raw GBNF) is not in the chain: as llama.cpp's common
    sampler does, a token is drawn first (fast paths kept), only that token is checked, and only
    when it is refused is the whole vocabulary masked and the draw repeated. A ``LazyCall``
    constraint starts unarmed: it takes hold when the watch sees a call's opener and lets go when
    the call is complete (then it waits for the next opener).
    """

    __slots__ = ("_lib", "_ffi", "ptr", "_penalties", "grammar", "_fast", "_bias", "_n_vocab",
                 "_top_k", "_delta", "_cand", "_arr", "_bias_ids", "_gbnf", "_guide", "_scratch",
                 "_ids", "rejected", "_lazy", "_lazy_gbnf")

    def __init__(self, native: Any, vocab: Any, n_vocab: int, n_ctx: int, params: SamplingParams,
                 guide: Guide | None = None, lazy: LazyCall | None = None) -> None:
        self._ffi = ffi = native.ffi
        self._lib = lib = native.lib
        self._penalties: Any = None
        self._guide = guide
        self._lazy = lazy
        self._lazy_gbnf: Any = None  # a lazy call's grammar sampler, never fed (each call gets a clone)
        self._gbnf: Any = None  # llama.cpp grammar sampler (raw GBNF, or a schema without llguidance)
        # whether a constraint holds now (a lazy one: only inside a call)
        self.grammar = lazy is None and (guide is not None or bool(params.grammar and params.grammar.strip()))
        self._n_vocab = n_vocab
        self._bias: list[tuple[int, float]] = []
        self._fast = False
        self._top_k = 0  # > 0: pre-select candidates in numpy before the C chain (see _draw_top_k)
        self._delta = 10.0
        self._cand: Any = None
        self._arr: Any = None
        self._bias_ids: np.ndarray | None = None
        self._scratch: Any = None  # n_vocab candidates, allocated on the first constrained slow path
        self._ids: Any = None
        self.rejected = 0  # sampled tokens the constraint refused (each cost a full-vocabulary pass)
        cparams = lib.llama_sampler_chain_default_params()
        cparams.no_perf = True
        chain = lib.llama_sampler_chain_init(cparams)
        if chain == ffi.NULL:
            raise GrammarError("could not create a sampler chain")  # pragma: no cover - allocation failure
        self.ptr = chain
        try:
            self._build(vocab, n_vocab, n_ctx, params)
        except BaseException:
            self.close()
            raise

    def _add(self, smpl: Any) -> Any:
        if smpl == self._ffi.NULL:
            raise InvalidRequestError("llama.cpp rejected a sampling parameter")
        self._lib.llama_sampler_chain_add(self.ptr, smpl)  # the chain takes ownership
        return smpl

    def _build(self, vocab: Any, n_vocab: int, n_ctx: int, p: SamplingParams) -> None:
        lib, ffi = self._lib, self._ffi
        if p.logit_bias:
            items = list(p.logit_bias.items())
            for tok, bias in items:
                if not 0 <= int(tok) < n_vocab:
                    raise InvalidRequestError(
                        f"logit_bias: token {tok} is not in the vocabulary (0..{n_vocab - 1})"
                    )
                if not math.isfinite(float(bias)) and float(bias) != -math.inf:
                    raise InvalidRequestError(f"logit_bias: bias for token {tok} must be a number")
            arr = ffi.new("llama_logit_bias[]", len(items))
            for i, (tok, bias) in enumerate(items):
                arr[i].token = int(tok)
                arr[i].bias = float(bias)
            # llama.cpp copies the array, so `arr` may die after this call.
            self._add(lib.llama_sampler_init_logit_bias(n_vocab, len(items), arr))
        last_n = n_ctx if p.repeat_last_n < 0 else p.repeat_last_n
        penalised = p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if last_n > 0 and penalised:
            self._penalties = self._add(
                lib.llama_sampler_init_penalties(
                    n_vocab, last_n, float(p.repeat_penalty), float(p.frequency_penalty),
                    float(p.presence_penalty)
                )
            )
        lazy_gbnf = self._lazy is not None and self._lazy.guide is None
        if (self.grammar and self._guide is None) or lazy_gbnf:
            if not p.grammar:
                raise GrammarError("a lazy tool-call constraint needs its GBNF form")
            # llama.cpp prints the parse error to stderr (not the log callback) and returns NULL.
            g = lib.llama_sampler_init_grammar(vocab, p.grammar.encode("utf-8"), b"root")
            if g == ffi.NULL:
                raise GrammarError(
                    "invalid GBNF grammar: llama.cpp could not parse it (check the syntax, that every "
                    "referenced rule is defined, and that the start rule is named 'root')"
                )
            if lazy_gbnf:
                self._lazy_gbnf = g
            else:
                self._gbnf = g
        if p.temperature <= 0:
            self._add(lib.llama_sampler_init_greedy())
            # Plain greedy (bias allowed) is an argmax: numpy on the logits row skips llama.cpp's
            # copy of the whole vocabulary into a candidate array (262k entries for Gemma 3).
            self._fast = self._penalties is None
            self._bias = [(int(t), float(b)) for t, b in p.logit_bias.items()]
            return
        if p.top_k > 0:
            self._add(lib.llama_sampler_init_top_k(int(p.top_k)))
            same_layout = ffi.sizeof("llama_token_data") == _TOKEN_DATA.itemsize
            if self._penalties is None and p.top_k <= _CAND_MAX // 4 and same_layout:
                # Only the top_k best survive anyway; handing llama.cpp a few hundred candidates
                # instead of the whole vocabulary saves its copy and partial sort (about 1 ms a token
                # with Gemma's 262k vocabulary). Penalties can reorder tokens, so not then.
                self._top_k = int(p.top_k)
                self._cand = ffi.new("llama_token_data[]", _CAND_MAX + len(p.logit_bias))
                self._arr = ffi.new("llama_token_data_array *")
                self._bias_ids = np.array(sorted({int(t) for t in p.logit_bias}), dtype=np.int32)
        if 0.0 < p.typical_p < 1.0:
            self._add(lib.llama_sampler_init_typical(float(p.typical_p), 1))
        if 0.0 < p.top_p < 1.0:
            self._add(lib.llama_sampler_init_top_p(float(p.top_p), 1))
        if p.min_p > 0.0:
            self._add(lib.llama_sampler_init_min_p(float(p.min_p), 1))
        self._add(lib.llama_sampler_init_temp(float(p.temperature)))
        seed = _RANDOM_SEED if p.seed < 0 else int(p.seed) & 0xFFFFFFFF
        self._add(lib.llama_sampler_init_dist(seed))

    @property
    def guide(self) -> Guide | None:
        """The llguidance matcher that holds now (None: no constraint, GBNF, or a lazy one unarmed);
        it has taken every token sampled so far."""
        return self._guide if self.grammar else None

    def accept_history(self, tokens: list[int]) -> None:
        """Feed prompt tokens to the penalty sampler only (the grammar must not see the prompt)."""
        if self._penalties is not None:
            for t in tokens:
                self._lib.llama_sampler_accept(self._penalties, t)

    def sample(self, ctx: Any, idx: int) -> int:
        """Sample from output row ``idx`` of the last decode and accept the token into the chain
        (and the constraint, if any)."""
        if self._lazy is None:
            return self._sample(ctx, idx)
        if self.grammar:  # inside a lazy call
            t = self._sample(ctx, idx)
            if self._call_done():
                self._disarm()
            return t
        return self._sample_free(ctx, idx)

    def _sample_free(self, ctx: Any, idx: int) -> int:
        """A token of the free text around lazy calls. One that opens a call with text the call's
        constraint refuses after the opener (a piece running past it) is drawn again without it."""
        lib = self._lib
        t = self._draw_greedy(ctx, idx) if self._fast else self._draw_top_k(ctx, idx) if self._top_k else -1
        if t < 0:
            t = int(lib.corral_sample_masked(self.ptr, self._ffi.NULL, ctx, idx, self._buffer(),
                                             self._n_vocab))
        banned: list[int] = []
        while not self._opens_well(t):
            banned.append(t)
            self.rejected += 1
            if len(banned) > _MAX_REDRAWS:
                raise GrammarError("a tool call's opener cannot be followed by a call that fits its schema")
            ids = np.setdiff1d(np.arange(self._n_vocab, dtype=np.int32), np.array(banned, dtype=np.int32))
            if self._ids is None:
                self._ids = self._ffi.new("llama_token[]", self._n_vocab)
            self._ffi.memmove(self._ids, ids.astype(np.int32).tobytes(), ids.size * 4)
            t = int(lib.corral_sample_subset(self.ptr, ctx, idx, self._ids, int(ids.size), self._buffer()))
            if t < 0:
                raise GrammarError("no token can follow the text before a tool call")
        lib.llama_sampler_accept(self.ptr, t)
        return t

    def _opens_well(self, t: int) -> bool:
        """Whether free-text token ``t`` may come: it opens no call, or it opens one whose constraint
        takes the text after the opener (then the constraint holds from here)."""
        lazy = self._lazy
        assert lazy is not None
        piece = lazy.piece(t)
        rest = lazy.watch.probe(piece)
        if rest is None:
            lazy.watch.feed(piece)
            return True
        if lazy.guide is not None:
            self._guide = lazy.guide.copy()
        else:
            self._gbnf = self._lib.llama_sampler_clone(self._lazy_gbnf)
        for tok in lazy.tokenize(rest) if rest else []:
            if not self._allows(tok):
                self._release()
                return False
            self._accept_constraint(tok)
        lazy.watch.feed(piece)
        self.grammar = True
        if rest and self._call_done():
            self._disarm()
        return True

    def _call_done(self) -> bool:
        if self._guide is not None:
            return self._guide.done
        assert self._lazy is not None
        return bool(self._lib.corral_grammar_allows(self._gbnf, self._lazy.eog))

    def _release(self) -> None:
        self.grammar = False
        self._guide = None
        if self._gbnf is not None:
            self._lib.llama_sampler_free(self._gbnf)
            self._gbnf = None

    def _disarm(self) -> None:
        """The lazy call is complete: free text again, watching for the next opener."""
        self._release()
        assert self._lazy is not None
        self._lazy.watch.rearm()

    def _accept_constraint(self, t: int) -> None:
        if self._guide is not None:
            self._guide.accept(t)
        else:
            self._lib.llama_sampler_accept(self._gbnf, t)

    def _sample(self, ctx: Any, idx: int) -> int:
        if self._fast:
            t = self._draw_greedy(ctx, idx)
        elif self._top_k:
            t = self._draw_top_k(ctx, idx)
        else:
            t = -1
        if not self.grammar:
            if t >= 0:
                return t  # the fast paths run without penalties: the chain has nothing to accept
            return int(self._lib.llama_sampler_sample(self.ptr, ctx, idx))
        lib = self._lib
        if t < 0:
            buf = self._buffer()
            t = int(lib.corral_sample_masked(self.ptr, self._ffi.NULL, ctx, idx, buf, self._n_vocab))
        if t < 0 or not self._allows(t):
            self.rejected += 1
            t = self._draw_constrained(ctx, idx)
        self._accept_constraint(t)
        lib.llama_sampler_accept(self.ptr, t)
        return t

    def _allows(self, t: int) -> bool:
        if self._guide is not None:
            return self._guide.allows(t)
        return bool(self._lib.corral_grammar_allows(self._gbnf, t))

    def _buffer(self) -> Any:
        if self._scratch is None:
            self._scratch = self._ffi.new("llama_token_data[]", self._n_vocab)
        return self._scratch

    def _draw_constrained(self, ctx: Any, idx: int) -> int:
        """The chain applied to the allowed tokens only: the slow path, taken after a refusal."""
        lib, ffi = self._lib, self._ffi
        if self._guide is not None:
            ids = self._guide.allowed()
            if ids.size:
                if self._ids is None:
                    self._ids = ffi.new("llama_token[]", self._n_vocab)
                ffi.memmove(self._ids, ids.tobytes(), ids.size * 4)
                buf = self._buffer()
                t = int(lib.corral_sample_subset(self.ptr, ctx, idx, self._ids, int(ids.size), buf))
            else:
                t = -1
        else:
            t = int(lib.corral_sample_masked(self.ptr, self._gbnf, ctx, idx, self._buffer(), self._n_vocab))
        if t < 0:
            raise GrammarError("the output grammar allows no next token (its schema cannot be completed)")
        return t

    def _draw_greedy(self, ctx: Any, idx: int) -> int:
        """Argmax of the logits row with the logit bias applied; -1 when llama.cpp should decide."""
        ptr = self._lib.llama_get_logits_ith(ctx, idx)
        logits = np.frombuffer(self._ffi.buffer(ptr, self._n_vocab * 4), dtype=np.float32)
        best = int(logits.argmax())
        if not self._bias:
            return best
        biased = dict(self._bias)
        if best in biased:
            return -1  # the raw winner is itself biased: let llama.cpp apply the bias to every candidate
        top = float(logits[best])
        for t, b in self._bias:
            v = float(logits[t]) + b
            if v > top or (v == top and t < best):
                best, top = t, v
        return best

    def _draw_top_k(self, ctx: Any, idx: int) -> int:
        """The chain applied to the tokens within ``_delta`` of the best logit, not yet accepted (the
        chain has no penalties here, so accepting changes nothing); -1 if that set might not contain
        the top_k (then the caller samples over the whole vocabulary)."""
        ffi, lib = self._ffi, self._lib
        ptr = lib.llama_get_logits_ith(ctx, idx)
        logits = np.frombuffer(ffi.buffer(ptr, self._n_vocab * 4), dtype=np.float32)
        ids = np.flatnonzero(logits >= logits.max() - self._delta)
        bias_ids = self._bias_ids
        assert bias_ids is not None
        if bias_ids.size:
            ids = ids[~np.isin(ids, bias_ids)]  # biased tokens are added once, below
        n = ids.size
        if n < self._top_k:
            self._delta *= 2.0  # too few: every excluded token is below all of these, but k are needed
            return -1
        if n > _CAND_MAX:
            self._delta *= 0.5
            return -1
        if n > 4 * self._top_k:
            self._delta *= 0.9  # drift toward a small candidate set
        ids = np.concatenate((ids, bias_ids)).astype(np.int32, copy=False)
        n = ids.size
        data = np.empty(n, dtype=_TOKEN_DATA)
        data["id"] = ids
        data["logit"] = logits[ids]
        data["p"] = 0.0
        ffi.memmove(self._cand, data.tobytes(), n * _TOKEN_DATA.itemsize)
        arr = self._arr
        arr.data, arr.size, arr.selected, arr.sorted = self._cand, n, -1, False
        lib.llama_sampler_apply(self.ptr, arr)
        if not 0 <= arr.selected < arr.size:
            return -1
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        if self.ptr is not None:
            self._lib.llama_sampler_free(self.ptr)
            self.ptr = None
            self._penalties = None
        for g in (self._gbnf, self._lazy_gbnf):
            if g is not None:
                self._lib.llama_sampler_free(g)
        self._gbnf = self._lazy_gbnf = None
        self._guide = None


def logprobs_from_logits(
    logits: np.ndarray, token: int, top_n: int, piece: Any
) -> tuple[TokenLogprob, list[TokenLogprob] | None]:
    """Log-softmax over the full vocabulary: the chosen token's entry and the ``top_n`` best.

    ``logits`` is a float32 view of llama.cpp's row (valid only until the next decode), ``piece``
    maps a token id to its bytes.
    """
    x = logits.astype(np.float64, copy=False) if logits.dtype != np.float32 else logits
    m = float(x.max())
    lse = m + math.log(float(np.exp(x - m).sum()))
    chosen = _entry(token, float(x[token]) - lse, piece)
    if top_n <= 0:
        return chosen, None
    n = min(top_n, MAX_TOP_LOGPROBS, x.shape[0])
    idx = np.argpartition(x, -n)[-n:]
    idx = idx[np.argsort(-x[idx], kind="stable")]
    return chosen, [_entry(int(i), float(x[i]) - lse, piece) for i in idx]


def _entry(token: int, logprob: float, piece: Any) -> TokenLogprob:
    data: bytes = piece(token)
    return TokenLogprob(
        token=token, text=data.decode("utf-8", errors="replace"), bytes=list(data), logprob=logprob
    )
