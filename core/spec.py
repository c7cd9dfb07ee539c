"""The model spec: everything the engine needs about one model, resolved once per request by the store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec import Struct, field

from corral.conversation import Message


class ModelDetails(Struct, frozen=True, kw_only=True):
    """``details`` as ``/api/tags``, ``/api/show`` and ``/api/ps`` report them.

    The one core-owned details type: the store fills it from the config blob (tags, ps) or from the
    GGUF header (show); each wire layer copies the fields it sends into its own wire struct.
    """

    parent_model: str = ""  # the model this one was created FROM, when the manifest says
    format: str = "gguf"
    family: str = ""  # the architecture family, e.g. "gemma3"
    families: tuple[str, ...] | None = None
    parameter_size: str = ""  # human form, e.g. "268.10M"
    quantization_level: str = ""  # e.g. "Q4_K_M"
    context_length: int | None = None  # trained context, when known
    embedding_length: int | None = None


class GGUFFacts(Struct, frozen=True, kw_only=True):
    """What the model file's GGUF header says that the engine and the capability checks read.

    Read from the header alone (never the weights) and cached by the store per file version.
    """

    architecture: str = ""  # general.architecture
    context_length: int | None = None  # the trained context (<arch>.context_length); caps num_ctx
    embedding_length: int | None = None  # <arch>.embedding_length
    chat_template: str | None = None  # tokenizer.chat_template (Jinja), used when there is no Go TEMPLATE
    pooling: bool = False  # <arch>.pooling_type is present: the model pools tokens into embeddings
    rerank: bool = False  # <arch>.pooling_type is 4 (rank): a reranker, its pooled output is a score

    @classmethod
    def from_kv(cls, kv: Mapping[str, Any] | None) -> GGUFFacts:
        """The facts from a GGUF metadata mapping (``None``: a model without a readable file)."""
        if not kv:
            return cls()
        arch = kv.get("general.architecture")
        arch = arch if isinstance(arch, str) else ""
        template = kv.get("tokenizer.chat_template")
        return cls(
            architecture=arch,
            context_length=_positive_int(kv.get(f"{arch}.context_length")),
            embedding_length=_positive_int(kv.get(f"{arch}.embedding_length")),
            chat_template=template if isinstance(template, str) and template else None,
            pooling=f"{arch}.pooling_type" in kv,
            rerank=kv.get(f"{arch}.pooling_type") == POOLING_RANK,
        )


class ModelFiles(Struct, frozen=True, kw_only=True):
    """The files a model is loaded from, as absolute paths (text, so the spec can cross to a runner)."""

    model: str | None = None  # the GGUF weights; None when the manifest names no (present) model blob
    projector: str | None = None  # multimodal projector (mmproj GGUF) from a projector layer
    adapters: tuple[str, ...] = ()  # LoRA adapter GGUFs, applied in order with scale 1.0
    draft: str | None = None  # a draft model for speculative decoding (Modelfile DRAFT, a draft layer)


class ModelSpec(Struct, frozen=True, kw_only=True):
    """One model as the engine sees it: resolved once per request by ``Store.resolve`` and then only read.

    The scheduler keys a loaded model by ``digest`` (with the load options); the prompt planner reads
    ``template``, ``system``, ``messages`` and ``gguf.chat_template``; the capability checks read
    ``capabilities``; the runner loads ``files``; ``/api/ps`` reports ``details``. A per-model fact a
    new feature needs becomes a field here (filled in ``corral.store.resolve``), never a lookup on a
    store record.
    """

    name: str  # canonical full name, host/namespace/model:tag (Ollama's wording in capability errors)
    display: str  # the shortest form, e.g. "gemma3:270m" (/api/ps rows, quoted errors, logs)
    digest: str  # hex sha256 of the manifest bytes: the model's identity
    files: ModelFiles = ModelFiles()
    parameters: dict[str, Any] = field(default_factory=dict)  # Modelfile PARAMETERs (params layer)
    template: str | None = None  # the Go TEMPLATE layer, if any (it beats gguf.chat_template)
    system: str | None = None  # the SYSTEM layer
    messages: tuple[Message, ...] = ()  # Modelfile MESSAGEs, put before a request's own
    capabilities: tuple[str, ...] = ()  # completion | embedding | rerank, tools, insert, vision, thinking
    gguf: GGUFFacts = GGUFFacts()
    details: ModelDetails = ModelDetails()
    # From the config blob, Ollama's names: the built-in prompt renderer (corral.prompts.renderers),
    # the output parser (corral.prompts.formats) and the minimum Ollama version the model requires.
    renderer: str = ""
    parser: str = ""
    requires: str = ""

    def has(self, capability: str) -> bool:
        """True when the model has ``capability`` (one of the names in ``capabilities``)."""
        return capability in self.capabilities

    @property
    def embedding_only(self) -> bool:
        """An embedding model or a reranker: no text completion; loaded for pooled output, one sequence."""
        return (self.has("embedding") or self.has("rerank")) and not self.has("completion")


POOLING_RANK = 4  # GGUF <arch>.pooling_type of rerankers (llama.cpp's LLAMA_POOLING_TYPE_RANK)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
