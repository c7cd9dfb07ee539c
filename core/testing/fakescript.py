"""The fake backend's script: the rules that shape its replies, the calls it records, and its
unscripted reply."""

from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

import msgspec

from corral.errors import BackendError
from corral.types import GenerationRequest, LoadOptions

__all__ = ["FakeCall", "Rule", "biased", "default_reply", "load_rules"]

_WORDS = (
    "the", "a", "river", "light", "model", "answer", "quiet", "bright", "small", "garden", "stone",
    "paper", "cloud", "signal", "story", "window", "morning", "engine", "field", "simple", "green",
    "tiny", "corral", "echo", "token", "reply", "is", "and", "of", "with", "under", "over", "near",
)


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One scripted behaviour; the first rule whose ``match`` occurs in the prompt text wins."""

    match: str = ""  # substring of the prompt text ("" matches every prompt)
    reply: str | None = None  # None: the default deterministic reply
    delay: float = 0.0  # seconds to wait before each token
    error: str | None = None  # raise BackendError(error) (before the first token, or at error_after)
    crash: bool = False  # os._exit the process (simulates a runner dying)
    error_after: int | None = None  # tokens emitted before the error or crash
    # seconds a load spends at 0 % progress when ``match`` occurs in the model's path (script rules only)
    stall_load: float = 0.0


class FakeCall(msgspec.Struct, kw_only=True):
    """One call the fake backend saw, in ``FakeBackend.history``."""

    op: str  # estimate | load | tokenize | detokenize | generate | embed | rerank | unload | quantize
    handle: str = ""
    path: str = ""
    text: str = ""  # prompt text for generate, input text for tokenize
    request: GenerationRequest | None = None
    options: LoadOptions | None = None


def load_rules(path: str | os.PathLike[str]) -> list[Rule]:
    """Read a CORRAL_FAKE_SCRIPT file; a malformed one raises BackendError naming the file."""
    try:
        return msgspec.json.decode(Path(path).read_bytes(), type=list[Rule])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BackendError(f"fake backend: cannot read script {path}: {exc}") from None


def biased(ids: list[int], bias: dict[int, float]) -> list[int]:
    """A reply under ``logit_bias`` as a real sampler would pick it: a token biased by +100 wins every
    step, one biased by -100 never appears."""
    if not bias:
        return ids
    top = max(bias, key=lambda t: bias[t])
    if bias[top] >= 100:
        return [top] * len(ids)
    return [t for t in ids if bias.get(t, 0.0) > -100]


def default_reply(prompt_text: str, seed: int = 0, temperature: float = 0.0) -> str:
    """The fake's unscripted reply: seeded filler words, then an echo of the prompt's last words.

    Temperature 0 ignores the seed (greedy is deterministic); otherwise the seed picks the words,
    and seed -1 means a fresh random choice each time, like a real sampler.
    """
    if temperature > 0 and seed == -1:
        seed = random.randrange(1 << 31)
    key = f"{prompt_text}\x00{seed if temperature > 0 else 0}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    visible = re.sub(r"<[^<>\s]{1,40}>", " ", prompt_text)  # drop template control tokens
    echo = " ".join(visible.split()[-6:])
    words = [rng.choice(_WORDS) for _ in range(rng.randrange(8, 16))]
    tail = f" You said: {echo}." if echo else ""
    return " ".join(words).capitalize() + "." + tail
