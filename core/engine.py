"""The one pipeline behind both wire APIs: resolve, check, merge options, load, prompt, generate, parse."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import msgspec

from corral.config import Config
from corral.errors import BackendError, ContextLengthError, InvalidRequestError
from corral.jobs import (
    ChatJob,
    Chunk,
    DetokenizeJob,
    EmbedJob,
    EmbedOutput,
    GenerateJob,
    LoadProgress,
    LogprobEntry,
    Metrics,
    RenderedPrompt,
    RerankJob,
    RerankOutput,
    Think,
    TokenizeJob,
)
from corral.media import inspect_media
from corral.options import for_prompt, merge_options, to_generation, to_load_options
from corral.prompts import (
    ParsedDelta,
    PromptPlan,
    TokenCounter,
    check_capabilities,
    plan_chat,
    plan_generate,
)
from corral.prompts.formats import StreamParser
from corral.prompts.media import split_media
from corral.runner import RunnerFactory, subprocess_runners
from corral.scheduler import Lease, RunningModel, Scheduler
from corral.spec import ModelSpec
from corral.store import Store
from corral.types import GenerationRequest, LoadOptions, MediaInput, TokenEvent

log = logging.getLogger("corral.engine")

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the prompt, "
    "adjust the context length in settings, or use a model with a longer context length"
)
INPUT_TOO_LONG = "the input length exceeds the context length"
EMBED_BATCH = 64  # inputs per runner call of an embed job: cancellable between calls; a decode packs 64


class Engine:
    """Runs generate, chat and embed jobs; owns the scheduler (and through it every runner)."""

    def __init__(self, config: Config, store: Store, scheduler: Scheduler | None = None, *,
                 runner_factory: RunnerFactory | None = None) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler or Scheduler(config, runner_factory or subprocess_runners(config))
        self._suffix_tokens: dict[tuple[str, str], list[int]] = {}

    # ---- shared steps ---------------------------------------------------------------------------
    async def _resolve(self, model: str, needed: list[str]) -> ModelSpec:
        spec = await asyncio.to_thread(self.store.resolve, model)  # 404 / 400 propagate
        check_capabilities(spec, needed)
        return spec

    def _options(self, spec: ModelSpec, options: dict[str, Any], *, shift: bool = True,
                 logprobs: bool = False, top_logprobs: int = 0,
                 logit_bias: dict[int, float] | None = None) -> tuple[LoadOptions, GenerationRequest]:
        """The load options and the generation settings of one request, each converted once from the
        model's parameters and the request's options: every 400 about options is raised here, before
        anything is loaded. The generation settings get their prompt from ``for_prompt``."""
        opts = merge_options(spec.parameters, options)
        generation = to_generation(opts, shift=shift, logprobs=logprobs, top_logprobs=top_logprobs,
                                   logit_bias=logit_bias)
        load = to_load_options(opts, self.config, n_ctx_train=spec.gguf.context_length,
                               embedding=spec.embedding_only, adapters=spec.files.adapters)
        if spec.embedding_only:  # compat(ollama): embedding models always run one sequence at a time
            load = msgspec.structs.replace(load, num_parallel=1)
        if spec.files.projector and (spec.has("vision") or spec.has("audio")):
            load = msgspec.structs.replace(load, projector=spec.files.projector)
        if spec.files.draft and not spec.embedding_only:
            load = msgspec.structs.replace(load, draft=spec.files.draft)
        return load, generation

    def _media_needs(self, images: list[bytes]) -> list[str]:
        """The capabilities a request's images and audio need; bad or oversized media are a 400 here,
        from their headers alone, before a model is loaded."""
        limits = self.config.media_limits
        if len(images) > limits.max_count:
            raise InvalidRequestError(f"the request holds {len(images)} images or audio clips; the limit is "
                                      f"{limits.max_count} (CORRAL_MAX_MEDIA)")
        kinds = {inspect_media(data, limits, f"image {i + 1}").kind for i, data in enumerate(images)}
        return (["vision"] if "image" in kinds else []) + (["audio"] if "audio" in kinds else [])

    async def _tokenize(self, lease: Lease, plan: PromptPlan, *,
                        add_special: bool) -> tuple[list[int], list[MediaInput]]:
        """The prompt's tokens, and its media placed between them: the text between media markers is
        tokenized piece by piece (as mtmd does), BOS only at the very start. Control-token text (a
        rendered template's ``<start_of_turn>``, or a raw prompt's: the client's own template) is that
        token, as Ollama and llama-server's /completion read prompts."""
        if not plan.images:
            if plan.tokens is not None:  # counted while fitting the history
                return plan.tokens, []
            return await lease.runner.tokenize(plan.text, add_special=add_special, parse_special=True), []
        tokens: list[int] = []
        media: list[MediaInput] = []
        limits = self.config.media_limits
        for i, part in enumerate(split_media(plan.text, len(plan.images))):
            if i:
                data = plan.images[i - 1]
                kind = inspect_media(data, limits, f"image {i}").kind
                media.append(MediaInput(data=data, position=len(tokens), kind=kind))
            if part or (i == 0 and add_special):
                tokens += await lease.runner.tokenize(part, add_special=add_special and i == 0,
                                                      parse_special=True)
        return tokens, media

    async def _load_only(self, spec: ModelSpec, load: LoadOptions, keep_alive: float | None,
                         start: int, *, progress: bool) -> AsyncGenerator[Chunk, None]:
        """Empty prompt / messages: load the model (or unload it with keep_alive 0). With ``progress``,
        a chunk for each whole percent of the weights loaded comes first, if a load happens at all.

        Nothing is sent before the backend reports the first weights loaded, so a request that fails
        before (an unknown backend, a damaged file, a busy queue) still gets its HTTP status."""
        if keep_alive is not None and keep_alive <= 0:
            await self.scheduler.unload(spec)
            yield Chunk(done=True, done_reason="unload")
            return
        if not progress:
            lease = await self.scheduler.acquire(spec, load, keep_alive)
        else:
            fractions: asyncio.Queue[float] = asyncio.Queue()
            acquiring = asyncio.ensure_future(self.scheduler.acquire(spec, load, keep_alive,
                                                                     progress=fractions.put_nowait))
            total = _file_size(spec.files.model)
            got: Lease | None = None
            try:
                while True:
                    waiting = asyncio.ensure_future(fractions.get())
                    await asyncio.wait((acquiring, waiting), return_when=asyncio.FIRST_COMPLETED)
                    seen = [waiting.result()] if waiting.done() else []
                    waiting.cancel()
                    while not fractions.empty():  # every report before the load ended gets its line
                        seen.append(fractions.get_nowait())
                    for fraction in seen:
                        if 0.0 < fraction < 1.0:  # 0: nothing loaded yet; 1: the final chunk says it
                            yield Chunk(loading=LoadProgress(completed=int(fraction * total), total=total))
                    if acquiring.done():
                        break
                got = acquiring.result()
            finally:
                if got is None:  # the client went away mid-load, or the load failed
                    acquiring.cancel()
                    done = (await asyncio.gather(acquiring, return_exceptions=True))[0]
                    if isinstance(done, Lease):  # it was ours just before the cancel took effect
                        done.release()
            lease = got
        lease.release()
        yield Chunk(done=True, done_reason="load",
                    metrics=Metrics(total_duration=time.monotonic_ns() - start,
                                    load_duration=lease.load_duration_ns))

    async def _stream(self, lease: Lease, parser: StreamParser, request: GenerationRequest, start: int,
                      want_context: bool) -> AsyncGenerator[Chunk, None]:
        """Run ``request`` and turn its token events into chunks, parsed into content/thinking/tools."""
        generated: list[int] = []
        thinking = pending = 0  # generated tokens that were reasoning; tokens not yet released as text
        final: TokenEvent | None = None
        async with aclosing(lease.runner.generate(request)) as events:
            async for ev in events:
                if ev.token >= 0:
                    generated.append(ev.token)
                delta = parser.feed(ev.text) if ev.text else None
                # A token whose text the parser holds back counts with the text it is released in.
                pending += ev.token >= 0
                if delta is not None and (delta.thinking or delta.content or delta.tool_calls):
                    thinking += pending if delta.thinking and not delta.content else 0
                    pending = 0
                chunk = _delta_chunk(delta, ev)
                if chunk is not None:
                    yield chunk
                if ev.finish_reason is not None:
                    final = ev
                    break
        tail = _delta_chunk(parser.finish(), None)
        if tail is not None:
            yield tail
        stats = final.stats if final is not None else None
        metrics = Metrics(total_duration=time.monotonic_ns() - start, load_duration=lease.load_duration_ns)
        if stats is not None:
            metrics.prompt_eval_count = stats.prompt_tokens
            metrics.prompt_eval_duration = stats.prompt_eval_ns
            metrics.prompt_cached_count = stats.cached_tokens
            metrics.eval_count = stats.eval_count
            metrics.eval_duration = stats.eval_ns
            metrics.draft_count = stats.draft_tokens
            metrics.draft_accepted = stats.draft_accepted
            metrics.thinking_count = min(thinking, stats.eval_count)
        reason = (final.finish_reason if final else None) or "stop"
        yield Chunk(done=True, done_reason=reason, metrics=metrics,
                    context=request.prompt + generated if want_context else None,
                    stop_string=final.stop_string if final else "")

    @staticmethod
    def _request(generation: GenerationRequest, tokens: list[int], plan: PromptPlan, n_ctx: int, *,
                 truncate: bool, media: list[MediaInput]) -> GenerationRequest:
        if not truncate and len(tokens) >= n_ctx:
            raise ContextLengthError(f"{PROMPT_TOO_LONG} (the prompt has {len(tokens)} tokens and num_ctx is "
                                     f"{n_ctx}: raise num_ctx in the request's options, the model's "
                                     f"parameters or CORRAL_CONTEXT_LENGTH)")
        # the template's end-of-turn strings come after the user's own stops
        request = for_prompt(generation, tokens, n_ctx=n_ctx, grammar=plan.grammar,
                             json_schema=plan.json_schema, stop=plan.stop)
        # with media, the backend checks the whole prompt (image tokens included) against the context
        return msgspec.structs.replace(request, media=media) if media else request

    # ---- jobs -----------------------------------------------------------------------------------
    async def generate(self, job: GenerateJob) -> AsyncGenerator[Chunk, None]:
        """Stream a completion; the last chunk has ``done=True``, metrics and (unless raw) context."""
        start = time.monotonic_ns()
        spec = await self._resolve(job.model, _generate_needs(job) + self._media_needs(job.images))
        load, generation = self._options(spec, job.options, shift=job.shift, logprobs=job.logprobs,
                                         top_logprobs=job.top_logprobs, logit_bias=job.logit_bias)
        if not job.prompt and not job.suffix and not job.images:
            async with aclosing(self._load_only(spec, load, job.keep_alive, start,
                                                progress=job.load_progress)) as loading:
                async for chunk in loading:
                    yield chunk
            return
        short = generation.short and not (job.images or job.format or job.grammar)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive, short=short)
        try:
            info = lease.handle.info
            plan, tokens, media = await self._generate_prompt(lease, spec, job)
            request = self._request(generation, tokens, plan, info.n_ctx, truncate=job.truncate, media=media)
            # context tokens cannot carry an image: a client continuing from them would lose it unawares
            want_context = not job.raw and not media
            async with aclosing(self._stream(lease, plan.new_parser(), request, start,
                                             want_context=want_context)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            lease.release()

    async def chat(self, job: ChatJob) -> AsyncGenerator[Chunk, None]:
        """Stream an assistant turn; tool calls arrive whole, thinking split from content."""
        start = time.monotonic_ns()
        needed = _chat_needs(job) + self._media_needs([img for m in job.messages for img in m.images])
        spec = await self._resolve(job.model, needed)
        load, generation = self._options(spec, job.options, shift=job.shift, logprobs=job.logprobs,
                                         top_logprobs=job.top_logprobs, logit_bias=job.logit_bias)
        if not job.messages:
            async with aclosing(self._load_only(spec, load, job.keep_alive, start,
                                                progress=job.load_progress)) as loading:
                async for chunk in loading:
                    yield chunk
            return
        images = any(m.images for m in job.messages)
        short = generation.short and not (images or job.format or job.grammar or job.strict_tools)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive, short=short)
        try:
            info = lease.handle.info
            plan, tokens, media = await self._chat_prompt(lease, spec, job)
            request = self._request(generation, tokens, plan, info.n_ctx, truncate=job.truncate, media=media)
            if plan.turn_suffix:  # lets the backend ready the next turn's head once this answer ends
                key = (spec.digest, plan.turn_suffix)
                turn = self._suffix_tokens.get(key)
                if turn is None:  # the same for every turn of a model: tokenized once
                    turn = await lease.runner.tokenize(plan.turn_suffix, add_special=False,
                                                       parse_special=True)
                    self._suffix_tokens[key] = turn
                request = msgspec.structs.replace(request, turn_suffix=turn)
            async with aclosing(self._stream(lease, plan.new_parser(), request, start,
                                             want_context=False)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            lease.release()

    async def _generate_prompt(self, lease: Lease, spec: ModelSpec,
                               job: GenerateJob) -> tuple[PromptPlan, list[int], list[MediaInput]]:
        """The rendered prompt plan of a generate job, its tokens (after ``context``) and its media."""
        info = lease.handle.info
        # templates are untrusted work: rendered on a worker thread, never on the event loop
        plan = await asyncio.to_thread(plan_generate, spec, job, gguf_template=info.chat_template,
                                       bos_token=info.bos_token, eos_token=info.eos_token)
        tokens, media = await self._tokenize(lease, plan, add_special=plan.add_special and not job.context)
        media = [msgspec.structs.replace(m, position=m.position + len(job.context)) for m in media]
        return plan, list(job.context) + tokens, media

    async def render(self, job: GenerateJob | ChatJob) -> RenderedPrompt:
        """The prompt ``job`` renders to and its token count, without generating (Ollama's
        ``_debug_render_only``). The model is loaded: its tokenizer counts, and truncation needs it."""
        if isinstance(job, ChatJob):
            needed = _chat_needs(job) + self._media_needs([img for m in job.messages for img in m.images])
        else:
            needed = _generate_needs(job) + self._media_needs(job.images)
        spec = await self._resolve(job.model, needed)
        load, _generation = self._options(spec, job.options, logit_bias=job.logit_bias)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive)
        try:
            if isinstance(job, ChatJob):
                plan, tokens, _media = await self._chat_prompt(lease, spec, job)
            else:
                plan, tokens, _media = await self._generate_prompt(lease, spec, job)
        finally:
            lease.release()
        return RenderedPrompt(text=plan.text, token_count=len(tokens), image_count=len(plan.images))

    async def _chat_prompt(self, lease: Lease, spec: ModelSpec,
                           job: ChatJob) -> tuple[PromptPlan, list[int], list[MediaInput]]:
        """The rendered prompt plan of a chat job, its tokens and its media placed between them."""
        info = lease.handle.info
        counter = _token_counter(lease, asyncio.get_running_loop())
        # Rendering may call the token counter, which waits on this loop: so render on a thread.
        plan = await asyncio.to_thread(
            plan_chat, spec, job, gguf_template=info.chat_template, bos_token=info.bos_token,
            eos_token=info.eos_token, count_tokens=counter, num_ctx=info.n_ctx if job.truncate else None)
        tokens, media = await self._tokenize(lease, plan, add_special=plan.add_special)
        return plan, tokens, media

    async def count_tokens(self, job: ChatJob) -> int:
        """How many prompt tokens ``job`` renders to, without generating (the model is loaded)."""
        spec = await self._resolve(job.model, _chat_needs(job))
        load, _generation = self._options(spec, job.options)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive)
        try:
            _plan, tokens, _media = await self._chat_prompt(lease, spec, job)
        finally:
            lease.release()
        return len(tokens)

    async def tokenize(self, job: TokenizeJob) -> list[int]:
        """The model's token ids for ``job.text``."""
        spec = await self._resolve(job.model, [])
        load, _generation = self._options(spec, job.options)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive)
        try:
            return await lease.runner.tokenize(job.text, add_special=job.add_special,
                                               parse_special=job.parse_special)
        finally:
            lease.release()

    async def tokenize_with_pieces(self, job: TokenizeJob) -> tuple[list[int], list[bytes]]:
        """The token ids of ``job.text`` and each one's bytes (llama-server's ``with_pieces``)."""
        spec = await self._resolve(job.model, [])
        load, _generation = self._options(spec, job.options)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive)
        try:
            tokens = await lease.runner.tokenize(job.text, add_special=job.add_special,
                                                 parse_special=job.parse_special)
            return tokens, await lease.runner.token_pieces(tokens)
        finally:
            lease.release()

    async def detokenize(self, job: DetokenizeJob) -> str:
        """The text of ``job.tokens`` (an id outside the vocabulary is a 400)."""
        spec = await self._resolve(job.model, [])
        load, _generation = self._options(spec, job.options)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive)
        try:
            return await lease.runner.detokenize(list(job.tokens), render_special=job.render_special)
        finally:
            lease.release()

    async def rerank(self, job: RerankJob) -> RerankOutput:
        """One relevance score per document, in order; the model must be a reranker."""
        start = time.monotonic_ns()
        spec = await self._resolve(job.model, ["rerank"])
        load, _generation = self._options(spec, job.options)
        lease = await self.scheduler.acquire(spec, load, job.keep_alive)
        try:
            result = await lease.runner.rerank(job.query, list(job.documents))
        finally:
            lease.release()
        if len(result.scores) != len(job.documents) or not all(math.isfinite(x) for x in result.scores):
            raise BackendError("the reranker returned a wrong number of scores or non-finite ones")
        return RerankOutput(scores=list(result.scores), prompt_eval_count=result.prompt_tokens,
                            total_duration=time.monotonic_ns() - start, load_duration=lease.load_duration_ns)

    async def embed(self, job: EmbedJob) -> EmbedOutput:
        """One vector per input (L2-normalised when asked; ``dimensions`` truncates then re-normalises)."""
        start = time.monotonic_ns()
        spec = await self._resolve(job.model, [])
        load, _generation = self._options(spec, job.options)  # sampling options are checked, then unused
        lease = await self.scheduler.acquire(spec, load, job.keep_alive)
        n_ctx = lease.handle.info.n_ctx_embed or lease.handle.info.n_ctx
        normalize = job.normalize and not job.dimensions  # with dimensions: cut first, then normalise
        vectors: list[list[float]] = []
        try:
            # A batch at a time: a client that leaves (the route cancels this coroutine) stops the work
            # between batches, and the runner's own check between inputs stops the batch in flight.
            # Every input is tokenized and checked first, so a too-long one is a 400 before any work.
            token_lists: list[list[int]] = []
            for first in range(0, len(job.inputs), EMBED_BATCH):
                texts = job.inputs[first : first + EMBED_BATCH]
                token_lists += await asyncio.gather(*(lease.runner.tokenize(text) for text in texts))
            for i, tokens in enumerate(token_lists):
                if len(tokens) > n_ctx:
                    if not job.truncate:
                        raise ContextLengthError(INPUT_TOO_LONG)
                    token_lists[i] = tokens[:n_ctx]
            for first in range(0, len(token_lists), EMBED_BATCH):
                batch = token_lists[first : first + EMBED_BATCH]
                result = await lease.runner.embed(batch, normalize=normalize)
                if len(result.embeddings) != len(batch):
                    raise BackendError("the backend returned a wrong number of embeddings")
                vectors += [_finish_vector(v, job.dimensions, job.normalize) for v in result.embeddings]
        finally:
            lease.release()
        return EmbedOutput(embeddings=vectors, prompt_eval_count=sum(len(t) for t in token_lists),
                           total_duration=time.monotonic_ns() - start, load_duration=lease.load_duration_ns)

    # ---- management -----------------------------------------------------------------------------
    async def unload(self, model: str) -> bool:
        """Unload ``model`` now (or when its running requests end). False if it was not loaded."""
        spec = await asyncio.to_thread(self.store.resolve, model)
        return await self.scheduler.unload(spec)

    def running(self) -> list[RunningModel]:
        return self.scheduler.running()

    async def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Refuse new work, let in-flight requests finish, stop every runner."""
        await self.scheduler.shutdown(drain_timeout)


def _file_size(path: str | None) -> int:
    """The size of a model's weights file (the scheduler reports a missing one)."""
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _wants(think: Think) -> bool:
    return think is not None and think is not False


def _generate_needs(job: GenerateJob) -> list[str]:
    """The capabilities a generate job needs."""
    return ["completion"] + (["insert"] if job.suffix else []) + (["thinking"] if _wants(job.think) else [])


def _chat_needs(job: ChatJob) -> list[str]:
    """The capabilities a chat job needs (no tools are needed when ``tool_choice`` is none)."""
    tools = bool(job.tools) and job.tool_choice != "none"
    think = _wants(job.think) and not job.think_if_supported
    return ["completion"] + (["tools"] if tools else []) + (["thinking"] if think else [])


def _delta_chunk(delta: ParsedDelta | None, ev: TokenEvent | None) -> Chunk | None:
    """A chunk for a parsed delta and the event's logprobs, or None when there is nothing to send."""
    logprobs = []
    if ev is not None and ev.logprob is not None:
        logprobs.append(LogprobEntry(token=ev.logprob.text, logprob=ev.logprob.logprob,
                                     bytes=list(ev.logprob.bytes), top_logprobs=list(ev.top_logprobs or [])))
    content = delta.content if delta is not None else ""
    thinking = delta.thinking if delta is not None else ""
    tool_calls = list(delta.tool_calls) if delta is not None else []
    if not (content or thinking or tool_calls or logprobs):
        return None
    return Chunk(content=content, thinking=thinking, tool_calls=tool_calls, logprobs=logprobs)


def _finish_vector(v: list[float], dimensions: int | None, normalize: bool) -> list[float]:
    if not all(math.isfinite(x) for x in v):
        raise BackendError("the embedding contains NaN or infinite values")
    if dimensions:
        v = v[:dimensions]
        if normalize:
            norm = math.sqrt(sum(x * x for x in v))
            v = [x / norm for x in v] if norm > 0 else v
    return v


def _token_counter(lease: Lease, loop: asyncio.AbstractEventLoop) -> TokenCounter:
    """A blocking tokenizer for prompt planning on a worker thread: the tokens it counts are the ones
    the engine sends (same flags as the engine's own tokenize of a chat prompt)."""

    def count(text: str, add_special: bool) -> list[int]:
        fut = asyncio.run_coroutine_threadsafe(
            lease.runner.tokenize(text, add_special=add_special, parse_special=True), loop)
        return fut.result()

    return count
