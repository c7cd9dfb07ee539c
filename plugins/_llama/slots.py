"""Per-request and per-sequence state of the batching loop: jobs, slots, streams, prefix matching."""

from __future__ import annotations

import os
import queue
import time
from typing import Any

from corral.errors import ContextLengthError
from corral.textstream import StopMatcher, Utf8Decoder
from corral.types import CancelToken, GenerationRequest, GenerationStats, TokenEvent

from .guideddraft import GuidedDrafter
from .ngram import NgramDrafter
from .sampling import SamplerChain

__all__ = [
    "CONTEXT_LENGTH_MESSAGE", "Cells", "Job", "Slot", "Stream", "common_prefix", "default_threads",
    "fit_prompt",
]

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
        "t_admit", "t_first", "t_last", "cached_tokens", "n_gen", "decoder", "stopper", "done", "spans",
        "drafter", "drafted", "accepted",
    )

    def __init__(self, request: GenerationRequest, cancel: CancelToken, sampler: SamplerChain,
                 prompt: list[int], truncated: bool, order: int, limit: int,
                 spans: list[Any] | None = None, drafter: NgramDrafter | GuidedDrafter | None = None) -> None:
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
        # Images or audio in the prompt (MediaSpan, in order); their rows carry negative media keys.
        self.spans: list[Any] = spans or []
        self.drafter = drafter  # prompt-lookup speculation (None: no speculation at all)
        self.drafted = 0  # tokens guessed (by prompt lookup or a draft model) and verified
        self.accepted = 0  # of those, the ones the model agreed with

    def final_event(self, reason: str) -> TokenEvent:
        """The last event of the stream: held-back text, ``reason`` and the counts and timings."""
        text = self.stopper.feed(self.decoder.flush())[0]
        if not self.stopper.stopped:
            text += self.stopper.flush()
        first = self.t_first or time.perf_counter_ns()
        stats = GenerationStats(
            prompt_tokens=len(self.prompt),  # media rows included
            cached_tokens=self.cached_tokens,
            prompt_eval_ns=max(0, first - self.t_admit) if self.t_admit else 0,
            eval_count=self.n_gen,
            eval_ns=max(0, self.t_last - self.t_first) if self.t_first else 0,
            truncated=self.truncated,
            draft_tokens=self.drafted,
            draft_accepted=self.accepted,
        )
        return TokenEvent(token=-1, text=text, finish_reason=reason, stats=stats,
                          stop_string=self.stopper.matched or "")


class Slot:
    """One llama.cpp sequence id: the tokens whose KV it holds and the job it serves (if any).

    ``cached[i]`` is the token at position ``i`` of this sequence's KV. ``reuse_limit`` caps how
    much of it a later request may reuse (after a context shift only the kept head is exact).
    ``shares[other] = k`` records that positions ``[0, k)`` may be the same KV cells as ``other``'s
    (``seq_cp`` in a unified cache shares cells), which a context shift must not move.
    """

    __slots__ = ("id", "cached", "reuse_limit", "job", "state", "last_token", "last_used", "shares", "warm",
                 "draft", "draft_by_model", "debt", "rest")

    def __init__(self, seq_id: int) -> None:
        self.id = seq_id
        self.cached: list[int] = []
        self.reuse_limit = 0
        self.job: Job | None = None
        self.state = "idle"  # idle | prefill | gen
        self.last_token = -1
        self.last_used = 0.0
        self.shares: dict[int, int] = {}
        # Tokens to evaluate while the slot is idle: the chat template's turn suffix after an answer,
        # so the next turn (which starts with it) finds it cached. Dropped when a job takes the slot.
        self.warm: list[int] = []
        self.draft: list[int] = []  # tokens guessed to follow last_token, in this step's batch
        self.draft_by_model = False  # the draft came from the draft model, not from prompt lookup
        self.debt = 0.0  # seconds of steps to sit out: what its constraint's sampling cost the others
        self.rest = 0  # steps sat out in a row while short requests were served (stepplan.BULK_EVERY)

    @property
    def reusable(self) -> list[int]:
        return self.cached[: self.reuse_limit]

    def touch(self) -> None:
        self.last_used = time.monotonic()


class Cells:
    """The KV cells behind a batcher's slots: cutting a sequence, and sharing a prefix (``seq_cp`` in a
    unified cache shares cells) while recording it in both slots' ``shares``."""

    __slots__ = ("_lib", "_mem", "_slots")

    def __init__(self, lib: Any, mem: Any, slots: list[Slot]) -> None:
        self._lib, self._mem, self._slots = lib, mem, slots

    def truncate(self, s: Slot, p: int) -> None:
        """Keep positions ``[0, p)`` of ``s`` (and drop its warm tokens)."""
        s.warm = []
        self._lib.llama_memory_seq_rm(self._mem, s.id, p, -1)
        del s.cached[p:]
        s.reuse_limit = min(s.reuse_limit, len(s.cached))
        for oid, k in list(s.shares.items()):
            o = self._slots[oid]
            if min(k, p) <= 0:
                s.shares.pop(oid, None)
                o.shares.pop(s.id, None)
            else:
                s.shares[oid] = o.shares[s.id] = min(k, p)

    def copy(self, src: Slot, dst: Slot, k: int) -> None:
        """Give ``dst`` the cells of ``src``'s positions ``[len(dst.cached), k)``."""
        have = len(dst.cached)
        self._lib.llama_memory_seq_rm(self._mem, dst.id, have, -1)
        self._lib.llama_memory_seq_cp(self._mem, src.id, dst.id, have, k)
        dst.cached = src.cached[:k]
        dst.reuse_limit = k
        for oid, kk in list(src.shares.items()):
            if oid == dst.id:
                continue
            v = max(dst.shares.get(oid, 0), min(kk, k))
            dst.shares[oid] = self._slots[oid].shares[dst.id] = v
        dst.shares[src.id] = src.shares[dst.id] = max(k, dst.shares.get(src.id, 0))


class Stream:
    """The iterator ``submit`` returns. Closing it, or dropping it unread, cancels the request so
    its slot is freed (a generator that never started would not run its cleanup)."""

    __slots__ = ("_job", "_over")

    def __init__(self, job: Job) -> None:
        self._job = job
        self._over = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> TokenEvent:
        if self._over:
            raise StopIteration
        item = self._job.out.get()
        # Once the caller cancels, tokens the loop produced before it noticed are not wanted: skip to
        # the final event (the loop posts it at its next step) so a cancelled stream ends at once.
        while item.__class__ is TokenEvent and item.finish_reason is None and self._job.cancel.cancelled:
            item = self._job.out.get()
        if isinstance(item, BaseException):
            self._over = True
            raise item
        if item.finish_reason is not None:
            self._over = True
        return item

    def close(self) -> None:
        self._over = True
        if not self._job.done:
            # The loop checks cancel tokens every step, so no wake-up (and no lock) is needed here:
            # this may run from a garbage collection on any thread.
            self._job.cancel.cancel()

    def __del__(self) -> None:
        self.close()


def default_threads() -> int:
    """Physical cores this process may run on: llama.cpp gains nothing from SMT siblings."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        cpu, phys = -1, "0"
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    cpu = int(val)
                elif key == "physical id":
                    phys = val
                elif key == "core id" and cpu in allowed:
                    cores.add((phys, val))
    except (OSError, ValueError):
        cores = set()
    return max(1, min(len(cores), len(allowed)) if cores else len(allowed))


# A step that mixes decoding with prompt chunks should take about this long, so that a long prompt
# arriving never stalls the streams that are already generating by much more (issue #4: 250 ms;
# the margin absorbs the jitter of a busy 2-core machine).
MIXED_STEP_TARGET_S = 0.15
MIN_CHUNK = 16


# A constrained sequence's next token is drawn on the loop thread, between two decodes, so what its
# grammar costs (a mask over the whole vocabulary when the drawn token is refused) delays every other
# sequence's next token too. Past GRAMMAR_FREE_S per token, the excess is paid back GRAMMAR_YIELD times
# over by sitting out steps while other sequences go on: a heavy grammar slows its own request, and
# takes at most 1 / (1 + GRAMMAR_YIELD) of the loop's time from its neighbours.
GRAMMAR_FREE_S = 0.01
GRAMMAR_YIELD = 2.0


class StepClock:
    """Learned costs of a decode-only step and of one prompt token (moving averages), which size the
    prompt chunks of a step that also decodes so that step stays near ``MIXED_STEP_TARGET_S``."""

    __slots__ = ("n_batch", "t_gen_step", "t_prompt_tok")

    def __init__(self, n_batch: int) -> None:
        self.n_batch = n_batch
        self.t_gen_step = 0.0  # seconds
        self.t_prompt_tok = 0.0  # seconds

    def learn(self, dt: float, n_prompt: int, n_gen: int) -> None:
        a = 0.3
        if n_prompt == 0:
            self.t_gen_step = dt if self.t_gen_step == 0 else (1 - a) * self.t_gen_step + a * dt
        elif n_prompt >= MIN_CHUNK:
            per = max(dt - (self.t_gen_step if n_gen else 0.0), 0.0) / n_prompt
            self.t_prompt_tok = per if self.t_prompt_tok == 0 else (1 - a) * self.t_prompt_tok + a * per

    def mixed_budget(self) -> int:
        if self.t_prompt_tok <= 0:
            return 64
        n = int((MIXED_STEP_TARGET_S - self.t_gen_step) / self.t_prompt_tok)
        return max(MIN_CHUNK, min(self.n_batch, n))
