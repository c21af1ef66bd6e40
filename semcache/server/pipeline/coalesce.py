"""Stage ``coalesce``: identical concurrent misses share one upstream call. The first leads
and goes on; the others wait for its answer and are served it, or go on themselves when the
leader got no answer worth sharing."""

from __future__ import annotations

import asyncio

from aiohttp import web

from semcache.server.pipeline.exchange import Exchange
from semcache.server.pipeline.lookup import count_savings
from semcache.server.pipeline.relay import serve_stored


async def coalesce(x: Exchange) -> web.StreamResponse | None:
    assert x.parsed is not None
    request = x.cache_request
    if request is None or x.controls.no_cache:
        return None
    leading = x.state.coalescer.join(request.exact_key)
    if leading is None:
        x.leader_key = request.exact_key
        return None
    shared = await asyncio.shield(leading)
    if shared is None:
        return None
    x.state.metrics.coalesced.inc()
    count_savings(x, shared)
    x.headers["X-Semcache-Coalesced"] = "true"
    return await serve_stored(x.request, x.parsed, shared, x.headers)
