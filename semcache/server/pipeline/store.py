"""Stage ``store``: a complete, valid answer is stored under the request's key (never a
bypass, a no-store request or an answer the client did not read to the end). A failure to
store is counted and logged; the client has its answer anyway.

The store runs after the response is released (:mod:`semcache.server.after_response`): a miss
costs its client the upstream's time and nothing more.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from aiohttp import web

from semcache.keys import CacheRequest
from semcache.policy import Reason
from semcache.server.pipeline.exchange import Exchange

logger = logging.getLogger("semcache.server")

MAX_PENDING_STORES = 1024  # answers waiting to be stored after their responses, at most
LABELLING = "#labelling"  # the after-response scope of a scope's labels for the error bound


async def store(x: Exchange) -> web.StreamResponse | None:
    request = x.cache_request
    if x.answer is None or request is None or not x.storable:
        return None
    if len(x.state.after_response) >= MAX_PENDING_STORES:
        # Stores fall behind (an overloaded model): this answer is not kept rather than
        # queued without bound in memory.
        x.state.metrics.cache_errors.labels("store_backlog").inc()
        return None
    x.storing = True
    x.state.after_response.spawn(_store(x, request, x.answer), request.scope.key)
    return None


async def _store(x: Exchange, request: CacheRequest, answer: dict[str, Any]) -> None:
    # A miss that skipped the model (busy, few hits) is kept for the exact tier only: embedding
    # it now would feed the very backlog it was spared.
    embed = x.decision is None or x.decision.reason is not Reason.MODEL_BUSY
    try:
        await x.state.cache.astore(request, answer, embed=embed)
    except Exception:
        logger.exception("storing an answer failed; the client got it anyway")
        x.state.metrics.cache_errors.labels("store").inc()
    finally:
        release_followers(x)
    # Apart from the store: a lookup of this scope waits for its pending stores (it reads its
    # writes), not for a label, which costs an embedding of two answers.
    if x.state.cache.error_bound is not None and x.decision is not None:
        x.state.after_response.spawn(
            label_candidate(x, request, answer), request.scope.key + LABELLING
        )


async def label_candidate(x: Exchange, request: CacheRequest, answer: dict[str, Any]) -> None:
    """Under ``max_error_rate``, a miss whose lookup had a candidate is a free label: the
    candidate's stored answer against the one the upstream just gave, compared by meaning as
    shadow checks compare them."""
    cache, decision = x.state.cache, x.decision
    if cache.error_bound is None or decision is None or decision.entry_id is None:
        return
    share = cache.error_bound.label_share(request.namespace)
    if share < 1.0 and random.random() >= share:
        return  # enough labels here: a sample of the candidates, each weighing 1 / share
    try:
        candidate = await cache.aentry(decision.entry_id)
        if candidate is None or not x.dialect.valid_answer(candidate.response):
            return
        verdict = await cache.acompare_answers(
            x.dialect.answer_text(candidate.response),
            x.dialect.answer_text(answer),
            x.state.config.shadow_agreement,
        )
        if cache.feedback(request, decision, right=verdict.agree, weight=1.0 / share):
            x.state.metrics.error_bound_labels.labels("miss").inc()
    except Exception:
        logger.exception("labelling a candidate for the error bound failed")
        x.state.metrics.cache_errors.labels("error_bound").inc()


def release_followers(x: Exchange) -> None:
    """Hand this request's answer (or ``None``) to the identical requests waiting for it, here
    and on other sidecars. After the store, when there is one: a request that comes once its
    leader is released finds the answer in the cache."""
    if x.leader_key is not None:
        x.state.coalescer.finish(x.leader_key, x.answer)
    if x.flight_key is not None and x.state.flights is not None:
        x.state.flights.finish(x.flight_key, x.answer)
