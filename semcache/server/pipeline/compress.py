"""Stage ``compress``: a miss's long chat history made shorter before it is sent (see
:mod:`semcache.compression`). Only ``outgoing`` changes: the answer is stored under the request
as the client sent it, and hits never pay for compression. Compression never fails a request:
whatever goes wrong, the history is sent as it came."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from numpy.typing import NDArray

from semcache.compression import Mode, Summarise
from semcache.server import accounting
from semcache.server.pipeline.exchange import Exchange

logger = logging.getLogger("semcache.server")

# Sentences a request embeds itself for recall; the rest of a conversation is embedded in the
# background after the request (a new conversation's first long request recalls by words).
EMBED_LIMIT = 8


class SummaryFailedError(Exception):
    pass


async def compress(x: Exchange) -> web.StreamResponse | None:
    assert x.parsed is not None
    mode = x.compression
    history = x.dialect.history(x.outgoing)
    note_role = x.dialect.note_role
    if mode is Mode.OFF or history is None or note_role is None:
        return None
    state = x.state
    service = state.compression
    metrics = state.metrics
    service.totals.requests += 1
    try:
        summarise = None
        if mode is Mode.SUMMARY:
            service.open_summaries()
            summarise = _summariser(x)
        vector = await asyncio.to_thread(_question_vector, x, history)
        result = await service.compressor.acompress(
            history,
            mode,
            summarise=summarise,
            scope=x.tenant,
            note_role=note_role,
            question_vector=vector,
            embed_limit=EMBED_LIMIT,
        )
    except Exception:  # the history goes as it came
        logger.exception("compressing a request failed; sending it uncompressed")
        metrics.compression_requests.labels(mode.value, "error").inc()
        return None
    service.warm_later(history, x.tenant)
    outcome = "unchanged" if result.applied is Mode.OFF else "compressed"
    if result.fallback is not None:
        outcome = "fallback"
        service.totals.fallbacks += 1
        logger.warning("summary mode fell back to extractive: %s", result.fallback)
    metrics.compression_requests.labels(mode.value, outcome).inc()
    metrics.compression_latency.labels(mode.value).observe(result.seconds)
    service.totals.original_tokens += result.original_tokens
    service.totals.sent_tokens += result.sent_tokens
    x.compressed = result
    applied = result.applied.value
    if result.applied is not Mode.OFF:
        service.totals.compressed += 1
        metrics.compression_tokens_removed.labels(mode.value).inc(result.removed_tokens)
        x.outgoing = x.dialect.with_history(x.outgoing, result.messages)
        if result.fallback is not None:
            applied = f"{mode.value}->{Mode.EXTRACTIVE.value}"
    x.headers["X-Semcache-Compression"] = applied
    x.headers["X-Semcache-Prompt-Tokens"] = f"{result.original_tokens}->{result.sent_tokens}"
    return None


def _question_vector(x: Exchange, history: list[dict[str, Any]]) -> NDArray[np.float32] | None:
    """The vector of the last user message, from the cache's memo when the lookup that missed
    embedded the same text (it usually has)."""
    request = x.cache_request
    last = history[-1].get("content") if history else None
    if request is None or last != request.prompt:
        return None
    vector: NDArray[np.float32] = x.state.cache.vectors.embed(
        [(request.namespace, request.prompt)]
    )[0]
    return vector


def _summariser(x: Exchange) -> Summarise:
    """Summaries asked of ``compression_model`` through the upstream pool, in the request's
    own API and with its credentials, billed like any other call."""
    state = x.state
    model = state.config.compression_model

    async def summarise(messages: list[dict[str, str]], max_tokens: int) -> str:
        path, body = x.dialect.summary_request(model, messages, max_tokens)
        async with state.router.send(
            "POST",
            path,
            headers=x.request.headers,
            body=orjson.dumps(body),
            model=model,
            tokens=x.dialect.request_tokens(body),
            priority=x.priority,
            buffered=True,
            api=x.dialect.api,
        ) as attempt:
            status = attempt.response.status
            try:
                answer = orjson.loads(await attempt.response.read())
            except orjson.JSONDecodeError:
                answer = None
            valid = status == 200 and x.dialect.valid_answer(answer)
            accounting.account(
                state, attempt, model, answer if valid else None, x.tenant, dialect=x.dialect
            )
            if not valid or not x.dialect.finished_normally(answer):
                raise SummaryFailedError(f"the summary model answered {status}")
            return x.dialect.answer_text(answer)

    return summarise
