"""Stage ``coalesce``: identical concurrent misses share one upstream call. The first leads
and goes on; the others wait for its answer and are served it, or go on themselves when the
leader got no answer worth sharing. With ``--redis`` the leader also leads on every sidecar
(see :mod:`semcache.shared.flights`), or waits for another sidecar's leader."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from semcache.server.pipeline.exchange import Exchange
from semcache.server.pipeline.lookup import count_savings
from semcache.server.pipeline.relay import serve_stored

logger = logging.getLogger("semcache.server")


async def coalesce(x: Exchange) -> web.StreamResponse | None:
    assert x.parsed is not None
    request = x.cache_request
    if request is None or x.controls.no_cache:
        return None
    leading = x.state.coalescer.join(request.exact_key)
    if leading is None:
        x.leader_key = request.exact_key
        flights = x.state.flights
        if flights is None:
            return None
        if flights.lead(request.exact_key):
            x.flight_key = request.exact_key
            return None
        shared = await flights.wait(request.exact_key, x.state.config.queue_max_wait_s)
        if shared is not None and x.dialect.valid_answer(shared):
            x.answer = shared  # for this sidecar's own followers
            await _keep(x, shared)
    else:
        shared = await asyncio.shield(leading)
    if shared is None or not x.dialect.valid_answer(shared):
        return None
    x.state.metrics.coalesced.inc()
    count_savings(x, shared, "coalesced")
    x.headers["X-Semcache-Coalesced"] = "true"
    return await serve_stored(x.request, x.parsed, shared, x.headers, x.first_event)


async def _keep(x: Exchange, answer: dict[str, Any]) -> None:
    """Another sidecar's answer, stored here too: the next identical request is a hit."""
    request = x.cache_request
    if request is None or not x.storable:
        return
    try:
        await x.state.cache.astore(request, answer)
    except Exception:
        logger.exception("storing another sidecar's answer failed")
        x.state.metrics.cache_errors.labels("store").inc()
