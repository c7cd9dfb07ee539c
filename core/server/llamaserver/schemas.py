"""Wire structs of llama-server's /tokenize, /detokenize and /rerank (Jina/Cohere and TEI shapes)."""

from __future__ import annotations

from typing import Any

from msgspec import Struct

WireKeepAlive = float | str | None


class TokenizeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /tokenize: llama-server's defaults (no BOS, control-token text parsed)."""

    model: str = ""
    content: str | None = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    keep_alive: WireKeepAlive = None


class TokenPiece(Struct, kw_only=True):
    """``with_pieces``: a token and its text, or its byte values when they are not whole UTF-8."""

    id: int
    piece: str | list[int]


class TokenizeResponse(Struct, kw_only=True):
    """``{"tokens": [...]}``."""

    tokens: list[int]


class TokenPiecesResponse(Struct, kw_only=True):
    """``{"tokens": [{"id", "piece"}, ...]}``: the answer with ``with_pieces``."""

    tokens: list[TokenPiece]


class DetokenizeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /detokenize."""

    model: str = ""
    tokens: list[int] | None = None
    keep_alive: WireKeepAlive = None


class DetokenizeResponse(Struct, kw_only=True):
    """``{"content": "..."}``."""

    content: str


class DocumentObject(Struct, kw_only=True, forbid_unknown_fields=True):
    """A document given as ``{"text": ...}`` (Cohere and Jina accept both forms)."""

    text: str


class RerankRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/rerank and /rerank: ``documents`` (Jina, Cohere) or ``texts`` (TEI)."""

    model: str = ""
    query: str | None = None
    documents: list[str | DocumentObject] | None = None
    texts: list[str] | None = None
    top_n: int | None = None
    return_documents: bool = False
    return_text: bool = False  # TEI's name for return_documents
    keep_alive: WireKeepAlive = None
    options: dict[str, Any] | None = None


class RerankDocument(Struct, kw_only=True):
    """The document echoed back with ``return_documents``."""

    text: str


class RerankResult(Struct, kw_only=True, omit_defaults=True):
    """One document's score; results are sorted best first."""

    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(Struct, kw_only=True):
    """Tokens evaluated for all pairs."""

    prompt_tokens: int
    total_tokens: int


class RerankResponse(Struct, kw_only=True):
    """The Jina/Cohere response llama-server gives."""

    model: str
    object: str
    usage: RerankUsage
    results: list[RerankResult]


class TEIRank(Struct, kw_only=True, omit_defaults=True):
    """One element of TEI's bare-list response."""

    index: int
    score: float
    text: str | None = None
