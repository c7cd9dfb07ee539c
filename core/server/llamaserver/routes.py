"""Route handlers of llama-server's own API shapes: tokenize, detokenize, rerank (same engine as /api)."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.params import JSONBody

from corral.errors import InvalidRequestError
from corral.jobs import DetokenizeJob, RerankJob, TokenizeJob
from corral.server import common
from corral.server.llamaserver import schemas as S
from corral.server.services import services

Req = Request[Any, Any, Any]


@post("/tokenize", status_code=200, operation_id="llamaserver_tokenize", tags=["llama-server"])
async def tokenize(request: Req,
                   data: JSONBody[S.TokenizeRequest]) -> S.TokenizeResponse | S.TokenPiecesResponse:
    """Token ids of ``content`` (llama-server's defaults: ``add_special`` false, ``parse_special`` true)."""
    if data.content is None:
        raise InvalidRequestError('"content" must be provided')
    job = TokenizeJob(model=common.require_model(data.model), text=data.content, add_special=data.add_special,
                      parse_special=data.parse_special, keep_alive=common.keep_alive(data.keep_alive))
    engine = services(request).engine
    if not data.with_pieces:
        return S.TokenizeResponse(tokens=await engine.tokenize(job))
    tokens, pieces = await engine.tokenize_with_pieces(job)
    out = [S.TokenPiece(id=t, piece=_piece(b)) for t, b in zip(tokens, pieces, strict=True)]
    return S.TokenPiecesResponse(tokens=out)


def _piece(data: bytes) -> str | list[int]:
    # compat(llama-server): the text when the bytes are valid UTF-8, else the list of byte values
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


@post("/detokenize", status_code=200, operation_id="llamaserver_detokenize", tags=["llama-server"])
async def detokenize(request: Req, data: JSONBody[S.DetokenizeRequest]) -> S.DetokenizeResponse:
    """The text of ``tokens``, control tokens included (as llama-server renders them)."""
    if data.tokens is None:
        raise InvalidRequestError('"tokens" must be provided')
    job = DetokenizeJob(model=common.require_model(data.model), tokens=data.tokens, render_special=True,
                        keep_alive=common.keep_alive(data.keep_alive))
    return S.DetokenizeResponse(content=await services(request).engine.detokenize(job))


def _rerank_operation(handler: Any, method: Any, path: list[str | Any]) -> str:
    # one handler on four paths: one operation id per path
    return "rerank_" + "_".join(str(p) for p in path if isinstance(p, str) and p)


@post(["/v1/rerank", "/rerank", "/v1/reranking", "/reranking"], status_code=200,
      operation_id=_rerank_operation, tags=["llama-server"])
async def rerank(request: Req, data: JSONBody[S.RerankRequest]) -> S.RerankResponse | list[S.TEIRank]:
    """Score ``documents`` against ``query`` with a reranker; best first, cut to ``top_n``.

    With ``texts`` instead of ``documents`` the answer is TEI's bare list (``score``, ``text``).
    """
    if data.query is None:
        raise InvalidRequestError('"query" must be provided')
    if data.documents is not None and data.texts is not None:
        raise InvalidRequestError('give "documents" or "texts", not both')
    tei = data.texts is not None
    raw = data.texts if tei else data.documents
    docs = [d if isinstance(d, str) else d.text for d in raw or []]
    if not docs:
        raise InvalidRequestError('"documents" must be a non-empty string array')
    top_n = len(docs) if data.top_n is None else data.top_n
    if top_n < 1:
        raise InvalidRequestError("top_n must be a positive integer")
    job = RerankJob(model=common.require_model(data.model), query=data.query, documents=docs,
                    options=common.options(data.options), keep_alive=common.keep_alive(data.keep_alive))
    svc = services(request)
    out = await svc.engine.rerank(job)
    svc.metrics.tokens_in.inc(job.model, amount=out.prompt_eval_count)
    order = sorted(range(len(docs)), key=lambda i: -out.scores[i])[:top_n]  # stable: ties keep input order
    echo = data.return_documents or data.return_text
    if tei:
        return [S.TEIRank(index=i, score=out.scores[i], text=docs[i] if echo else None) for i in order]
    results = [S.RerankResult(index=i, relevance_score=out.scores[i],
                              document=S.RerankDocument(text=docs[i]) if echo else None) for i in order]
    n = out.prompt_eval_count
    usage = S.RerankUsage(prompt_tokens=n, total_tokens=n)
    return S.RerankResponse(model=data.model, object="list", usage=usage, results=results)


ROUTES = [tokenize, detokenize, rerank]
