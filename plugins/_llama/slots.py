"""Per-request and per-sequence state of the batching loop: jobs, slots, prefix matching."""

from __future__ import annotations

import queue
import time
from typing import Any

from corral.errors import ContextLengthError
from corral.textstream import StopMatcher, Utf8Decoder
from corral.types import CancelToken, GenerationRequest

from .sampling import SamplerChain

__all__ = ["CONTEXT_LENGTH_MESSAGE", "Job", "Slot", "common_prefix", "fit_prompt"]

CONTEXT_LENGTH_MESSAGE = (
    "the prompt is longer than the context length currently available to the model; shorten the "
    "prompt, adjust the context length in settings, or use a model with a longer context length"
)


def common_prefix(a: list[int], b: list[int], limit: int | None = None) -> int:
    """Length of the longest common prefix of two token lists (optionally capped at ``limit``)."""
    n = min(len(a), len(b))
    if limit is not None:
        n = min(n, limit)
    if n == 0 or a[0] != b[0]:
        return 0
    if a[:n] == b[:n]:  # the common case for chats: one C-speed comparison
        return n
    # Binary search on slice equality keeps this O(n log n) in C rather than a Python loop.
    lo, hi = 1, n  # a[:lo] == b[:lo] holds, a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def fit_prompt(
    prompt: list[int], n_ctx: int, num_keep: int, shift: bool, bos: int | None
) -> tuple[list[int], bool]:
    """Ollama's truncation: a prompt that fills the context keeps ``num_keep`` tokens (plus BOS) and
    drops the middle so ``n_ctx - (n_ctx - keep) // 2`` tokens remain; without ``shift`` it is an error."""
    if len(prompt) < n_ctx:
        return prompt, False
    if not shift:
        raise ContextLengthError(CONTEXT_LENGTH_MESSAGE)
    keep = max(0, num_keep)
    if bos is not None and prompt and prompt[0] == bos:
        keep += 1
    keep = min(keep, n_ctx // 2)
    target = n_ctx - (n_ctx - keep) // 2
    tail = target - keep
    return prompt[:keep] + prompt[len(prompt) - tail :], True


class Job:
    """One submitted request on its way through the loop; events go to ``out``."""

    __slots__ = (
        "request", "cancel", "out", "sampler", "prompt", "truncated", "order", "limit",
        "t_admit", "t_first", "t_last", "cached_tokens", "n_gen", "decoder", "stopper", "done",
    )

    def __init__(self, request: GenerationRequest, cancel: CancelToken, sampler: SamplerChain,
                 prompt: list[int], truncated: bool, order: int, limit: int) -> None:
        self.request = request
        self.cancel = cancel
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.sampler = sampler
        self.prompt = prompt
        self.truncated = truncated
        self.order = order
        self.limit = limit  # tokens to generate at most
        self.t_admit = 0
        self.t_first = 0
        self.t_last = 0
        self.cached_tokens = 0
        self.n_gen = 0
        self.decoder = Utf8Decoder()
        self.stopper = StopMatcher(request.stop)
        self.done = False


class Slot:
    """One llama.cpp sequence id: the tokens whose KV it holds and the job it serves (if any).

    ``cached[i]`` is the token at position ``i`` of this sequence's KV. ``reuse_limit`` caps how
    much of it a later request may reuse (after a context shift only the kept head is exact).
    ``shares[other] = k`` records that positions ``[0, k)`` may be the same KV cells as ``other``'s
    (``seq_cp`` in a unified cache shares cells), which a context shift must not move.
    """

    __slots__ = ("id", "cached", "reuse_limit", "job", "state", "last_token", "last_used", "shares")

    def __init__(self, seq_id: int) -> None:
        self.id = seq_id
        self.cached: list[int] = []
        self.reuse_limit = 0
        self.job: Job | None = None
        self.state = "idle"  # idle | prefill | gen
        self.last_token = -1
        self.last_used = 0.0
        self.shares: dict[int, int] = {}

    @property
    def reusable(self) -> list[int]:
        return self.cached[: self.reuse_limit]

    def touch(self) -> None:
        self.last_used = time.monotonic()
