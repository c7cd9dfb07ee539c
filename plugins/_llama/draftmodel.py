"""Draft-model speculation: a small model with the target's vocabulary, in a context of its own beside
the target's, guessing each sequence's next tokens for the batching loop to verify."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from corral.errors import BackendError
from corral.types import LoadOptions

from .context import new_context, sequences
from .slots import common_prefix

__all__ = ["DEFAULT_DRAFT_TOKENS", "DraftModel"]

DEFAULT_DRAFT_TOKENS = 4  # compat(ollama): draft_num_predict's default when a model has a draft
_MIN_SHARE = 16  # a shared prefix shorter than this is evaluated again rather than copied


class DraftModel:
    """The draft model's context: sequence ``i`` drafts for the target's slot ``i`` at the same positions.

    The draft's KV for a sequence always holds a prefix of the tokens the target has seen there (its
    prompt, accepted tokens, and the draft's own latest guesses until the target rules on them);
    ``sync`` brings it to the target's tokens by dropping what differs, taking a longer common prefix
    from another sequence (``seq_cp`` shares cells, as in the target), and evaluating the rest. So the
    target's prefix reuse, its refusals of drafts, a context shift and a new request in a slot all
    reach the draft the same way, with no bookkeeping of their own.

    Drafting is greedy, as llama-server's ``draft-simple`` with its default ``p_min`` 0: each position
    is one batched decode for every sequence that drafts. Used only from the batching loop's thread.
    """

    def __init__(self, native: Any, model: Any, n_target_vocab: int, options: LoadOptions,
                 n_tokens: int) -> None:
        self._ffi, self._lib = ffi, lib = native.ffi, native.lib
        self.model = model
        self.n_tokens = n_tokens  # tokens drafted per step (draft_num_predict)
        # Ids past the target's vocabulary (a draft's may be up to 128 longer) are never guessed.
        self._n_target_vocab = n_target_vocab
        self._n_vocab = int(lib.llama_vocab_n_tokens(model.vocab))
        opts = msgspec.structs.replace(options, adapters=(), projector="")
        self._ctx = new_context(native, model, opts)
        self._mem = lib.llama_get_memory(self._ctx)
        self.n_batch = int(lib.llama_n_batch(self._ctx))
        self.n_seq = sequences(options)
        self._cached: list[list[int]] = [[] for _ in range(self.n_seq)]
        self._batch = ffi.new("llama_batch *", lib.llama_batch_init(self.n_batch, 0, 1))
        self._tok = ffi.new("llama_token[]", self.n_batch)
        self._pos = ffi.new("llama_pos[]", self.n_batch)
        self._seq = ffi.new("llama_seq_id[]", self.n_batch)
        self._logit = ffi.new("int8_t[]", self.n_batch)

    # ---- KV ------------------------------------------------------------------------------------
    @property
    def context(self) -> Any:
        """The draft's ``llama_context*`` (for its memory breakdown)."""
        return self._ctx

    def _keep(self, seq: int, k: int) -> None:
        if len(self._cached[seq]) > k:
            self._lib.llama_memory_seq_rm(self._mem, seq, k, -1)
            del self._cached[seq][k:]

    def _reuse(self, seq: int, tokens: list[int]) -> int:
        """Keep the longest prefix of ``tokens`` this sequence (or, by copying, another) already holds;
        how many tokens that is."""
        have = common_prefix(self._cached[seq], tokens)
        self._keep(seq, have)
        donor, best = -1, have
        for other, cached in enumerate(self._cached):
            if other != seq:
                k = common_prefix(cached, tokens)
                if k > best:
                    donor, best = other, k
        if donor >= 0 and best >= have + _MIN_SHARE:
            self._lib.llama_memory_seq_cp(self._mem, donor, seq, have, best)
            self._cached[seq] = tokens[:best]
            return best
        return have

    def shift(self, seq: int, keep: int, discard: int) -> None:
        """The target shifted this sequence (dropped ``discard`` tokens after ``keep``): do the same
        here when the cache can move cells; cells another sequence may share stay put (that sequence
        gives up the shifted part and evaluates it again later)."""
        cached = self._cached[seq]
        if len(cached) <= keep:
            return
        if not self._lib.llama_memory_can_shift(self._mem) or len(cached) <= keep + discard:
            self._keep(seq, keep)
            return
        for other, theirs in enumerate(self._cached):
            if other != seq and common_prefix(theirs, cached) > keep:
                self._keep(other, keep)
        n = len(cached)
        self._lib.llama_memory_seq_rm(self._mem, seq, keep, keep + discard)
        self._lib.llama_memory_seq_add(self._mem, seq, keep + discard, n, -discard)
        self._cached[seq] = cached[:keep] + cached[keep + discard :]

    def forget_all_but(self, busy: set[int]) -> None:
        """Free the KV of every sequence not in ``busy`` (the cache ran out of cells)."""
        for seq in range(self.n_seq):
            if seq not in busy:
                self._keep(seq, 0)

    # ---- evaluation ----------------------------------------------------------------------------
    def sync(self, wants: list[tuple[int, list[int]]]) -> bool:
        """Make each ``(seq, tokens)`` hold exactly ``tokens`` (the target's, after it evaluated them);
        False when llama.cpp could not (the sequences then hold a shorter prefix, still exact)."""
        pieces = [(seq, tokens[self._reuse(seq, tokens) :], False) for seq, tokens in wants]
        return self._evaluate(pieces) is not None

    def draft(self, wants: list[tuple[int, list[int], int, int]]) -> dict[int, list[int]]:
        """Greedy guesses: for each ``(seq, tokens, last, n)`` (the target holds ``tokens``, ``last`` was
        just sampled) up to ``n`` tokens after ``last``. Sequences whose evaluation failed get none."""
        out: dict[int, list[int]] = {seq: [] for seq, _, _, _ in wants}
        want = {seq: n for seq, _, _, n in wants}
        pieces = []
        for seq, tokens, last, _ in wants:
            have = self._reuse(seq, tokens)
            pieces.append((seq, [*tokens[have:], last], True))
        nxt = self._evaluate(pieces)
        while nxt:
            step = []
            for seq, t in nxt.items():
                draft = out[seq]
                if t >= self._n_target_vocab:
                    continue
                draft.append(t)
                if len(draft) < want[seq] and not self.model.is_eog(t):
                    step.append((seq, [t], True))
            nxt = self._evaluate(step) if step else None
        return out

    def _evaluate(self, pieces: list[tuple[int, list[int], bool]]) -> dict[int, int] | None:
        """Evaluate each ``(seq, tokens, output)``: ``tokens`` continue what the sequence holds, in as
        few decodes as ``n_batch`` allows; for ``output`` pieces, the greedy token after their last one.
        None when a decode failed (the sequences then hold what the decodes before it evaluated)."""
        ffi, lib = self._ffi, self._lib
        tok, pos, seqs, lg = self._tok, self._pos, self._seq, self._logit
        result: dict[int, int] = {}
        queue = [(seq, tokens, 0, output) for seq, tokens, output in pieces if tokens]
        while queue:
            i = 0
            rows: list[tuple[int, int]] = []  # (seq, batch row) of each output
            done: list[tuple[int, list[int]]] = []  # (seq, tokens) this decode evaluates
            rest = []
            for seq, tokens, start, output in queue:
                n = min(len(tokens) - start, self.n_batch - i)
                if n <= 0:
                    rest.append((seq, tokens, start, output))
                    continue
                end, p0 = start + n, len(self._cached[seq])  # a sequence appears once per call
                tok[i : i + n] = tokens[start:end]
                pos[i : i + n] = range(p0, p0 + n)
                seqs[i : i + n] = [seq] * n
                lg[i : i + n] = [0] * n
                if output and end == len(tokens):
                    lg[i + n - 1] = 1
                    rows.append((seq, i + n - 1))
                done.append((seq, tokens[start:end]))
                if end < len(tokens):
                    rest.append((seq, tokens, end, output))
                i += n
            if lib.corral_batch_fill(self._batch, self.n_batch, tok, pos, seqs, lg, i) != i:
                raise BackendError("internal error: draft batch larger than n_batch")
            rc = lib.llama_decode(self._ctx, self._batch[0])
            if rc == 1:  # no room: idle sequences give up their cells, then this is tried once more
                self.forget_all_but({seq for seq, _, _, _ in queue})
                rc = lib.llama_decode(self._ctx, self._batch[0])
            if rc != 0:
                for seq, _, _, _ in queue:
                    lib.llama_memory_seq_rm(self._mem, seq, len(self._cached[seq]), -1)
                return None
            for seq, evaluated in done:
                self._cached[seq].extend(evaluated)
            for seq, row in rows:
                ptr = lib.llama_get_logits_ith(self._ctx, row)
                logits = np.frombuffer(ffi.buffer(ptr, self._n_vocab * 4), dtype=np.float32)
                result[seq] = int(logits.argmax())
            queue = rest
        return result

    def close(self) -> None:
        """Free the batch and the context (the caller frees the model). Idempotent."""
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch[0])
            self._batch = None
        if self._ctx != self._ffi.NULL:
            self._lib.llama_free(self._ctx)
            self._ctx = self._ffi.NULL
