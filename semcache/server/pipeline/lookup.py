"""Stage ``look_up``: the exact tier, then the semantic tier, and under backlog a second look
at a lower threshold. A hit is served here and ends the request; a miss goes on, with the
evidence in its headers. Under ``history_match = "meaning"`` the request is first re-keyed by
its earlier user turns as the cache recognises them. A cache fault never fails the request: it
is counted and the request is forwarded as a bypass."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from aiohttp import web

from semcache import history
from semcache.decision import Decision
from semcache.dialects import Keying
from semcache.errors import InvalidRequestError
from semcache.keys import CacheRequest
from semcache.policy import Reason
from semcache.server.pipeline.exchange import Exchange
from semcache.server.pipeline.relay import serve_stored
from semcache.server.state import State

logger = logging.getLogger("semcache.server")


async def look_up(x: Exchange) -> web.StreamResponse | None:
    if x.cache_request is None:
        return None
    if x.controls.no_cache:
        x.outcome = "miss"
        x.headers.update({"X-Semcache": "miss", "X-Semcache-Reason": "no-cache"})
        return None
    try:
        if x.state.config.history_match == "meaning":
            await _recognise_history(x)
        request = x.cache_request
        assert request is not None
        decision = None
        if x.asked is not None and x.asked is not request:
            # An answer stored for the model asked for costs nothing either.
            decision = await _lookup(x.state, x.asked)
        if decision is None or decision.hit is None:
            decision = await _lookup(x.state, request)
    except Exception:
        logger.exception("cache lookup failed; forwarding upstream")
        x.state.metrics.cache_errors.labels("lookup").inc()
        x.outcome, x.storable = "bypass", False
        x.headers.update({"X-Semcache": "bypass", "X-Semcache-Reason": "cache error"})
        return None
    x.decision = decision
    if decision.hit is not None:
        if x.dialect.valid_answer(decision.hit.response):
            x.state.shadow.maybe_check(
                x.dialect, x.request.headers, x.body, decision.hit.response,
                decision.hit.entry_id, x.tenant, labelled=(request, decision),
            )  # fmt: skip
            return await _serve(x, decision, {})
        logger.error("entry %d does not hold an API answer; ignoring it", decision.hit.entry_id)
        x.state.metrics.cache_errors.labels("lookup").inc()
    degraded = await _degraded(x, decision)
    if (
        degraded is not None
        and degraded.hit is not None
        and x.dialect.valid_answer(degraded.hit.response)
    ):
        return await _serve(x, degraded, {"X-Semcache-Degraded": "true"})
    x.outcome = "miss"
    x.state.metrics.decisions.labels(decision.reason.value).inc()
    x.headers.update({"X-Semcache": "miss", "X-Semcache-Reason": decision.reason.value})
    if decision.score is not None:
        x.headers["X-Semcache-Score"] = f"{decision.score:.4f}"
    x.headers.update(_confidence(decision))
    return None


async def _recognise_history(x: Exchange) -> None:
    """Under ``history_match = "meaning"``: the request keyed by its earlier user turns as the
    cache recognises them (:mod:`semcache.history`), so that a follow-up after a reworded
    question finds the answers cached after the first wording. Only the key changes: the
    upstream gets the conversation as the client sent it."""
    request = x.cache_request
    if x.dialect.turns_field is None or request is None:
        return
    field: str = x.dialect.turns_field
    turns = x.body.get(field)
    if not isinstance(turns, list):
        return
    keying = Keying.of(request)

    def request_of(shorter: list[Any]) -> CacheRequest | None:
        body: dict[str, Any] = {**x.body, field: shorter}
        try:
            return x.dialect.parse(body, keying).request
        except InvalidRequestError:  # an earlier turn this API would not take as the last
            return None

    recognised = await history.recognised_turns(
        turns,
        request_of,
        lambda asked: _lookup(x.state, asked),
        max_user_turns=x.state.config.history_match_turns,
    )
    if recognised is not None:
        as_asked = x.asked is request  # else a budget re-keyed it: that lookup stays verbatim
        body: dict[str, Any] = {**x.body, field: recognised}
        x.parsed = x.dialect.parse(body, keying)
        if as_asked:
            x.asked = x.parsed.request


async def _lookup(state: State, request: CacheRequest) -> Decision:
    # Answers of this scope released but not yet stored are waited for (read your writes: a
    # client that asks again right after its answer finds it), unless the model is backlogged:
    # then the stores wait behind the lookups, and a lookup would wait for all of them.
    # At an idle model the prompt's vector is computed meanwhile (outside the batcher, which
    # has nothing to batch it with), so the wait costs nothing when the stores are quicker.
    storing = state.after_response.pending(request.scope.key)
    if storing and not state.batcher.backlogged():
        if state.batcher.idle():
            await asyncio.gather(
                state.after_response.settled(storing), state.cache.aprepare(request)
            )
        else:
            await state.after_response.settled(storing)
    return await _tiers(state, request)


async def _tiers(state: State, request: CacheRequest) -> Decision:
    # The exact tier first, on its own threads: an exact hit never waits for the embedding
    # batch that a semantic lookup joins.
    decision = await state.cache.alookup_exact(request)
    if decision is None:
        if state.batcher.busy():  # a miss goes upstream now rather than wait for the model
            state.metrics.model_busy.inc()
            return Decision(hit=None, reason=Reason.MODEL_BUSY)
        decision = await state.batcher.lookup(request)
    return decision


async def _serve(x: Exchange, decision: Decision, extra: dict[str, str]) -> web.StreamResponse:
    hit = decision.hit
    assert hit is not None and x.parsed is not None
    x.outcome = "hit"
    x.headers.update(
        {
            "X-Semcache": "hit",
            "X-Semcache-Score": f"{hit.score:.4f}",
            "X-Semcache-Entry": str(hit.entry_id),
            "X-Semcache-Reason": "degraded" if extra else decision.reason.value,
            **extra,
            **_confidence(decision),
        }
    )
    reason = "degraded" if extra else decision.reason.value
    x.state.metrics.decisions.labels(reason).inc()
    count_savings(x, hit.response, "exact" if decision.reason is Reason.EXACT else "semantic")
    return await serve_stored(x.request, x.parsed, hit.response, x.headers, x.first_event)


def count_savings(x: Exchange, stored: Any, tier: str) -> None:
    """What answering from ``tier`` (exact, semantic, coalesced) instead of the upstream
    saved."""
    assert x.parsed is not None
    prompt, completion = x.dialect.usage(stored)
    metrics = x.state.metrics
    metrics.tokens_saved.labels(tier, "prompt").inc(prompt)
    metrics.tokens_saved.labels(tier, "completion").inc(completion)
    metrics.cost_saved.labels(tier).inc(x.state.prices.cost(x.parsed.model, prompt, completion))


async def _degraded(x: Exchange, decision: Decision) -> Decision | None:
    """Under backlog, a second look at a lower similarity (and confidence), when configured."""
    state = x.state
    config, request = state.config, x.cache_request
    if (
        config.degraded_min_similarity is None
        or request is None
        or x.parsed is None
        or not decision.reason.near_miss
        or not state.router.backlogged(x.parsed.model)
    ):
        return None
    relaxed = dataclasses.replace(
        request,
        min_similarity=config.degraded_min_similarity,
        min_confidence=config.degraded_min_confidence,
    )
    try:
        return await state.cache.alookup(relaxed)
    except Exception:
        logger.exception("degraded lookup failed; forwarding upstream")
        state.metrics.cache_errors.labels("lookup").inc()
        return None


def _confidence(decision: Decision) -> dict[str, str]:
    if decision.confidence is None:
        return {}
    return {"X-Semcache-Confidence": f"{decision.confidence:.4f}"}
