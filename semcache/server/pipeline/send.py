"""Stage ``send``: a miss goes upstream. Identical concurrent misses share one upstream call
(the first leads, the others wait for its answer); the router picks an upstream and a key,
queues, retries and fails over (see :mod:`semcache.upstream.router`). The upstream answer stays
open for :mod:`.relay`."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from semcache.server.pipeline.exchange import Exchange
from semcache.server.pipeline.lookup import count_savings
from semcache.server.pipeline.relay import serve_stored


async def send(x: Exchange) -> web.StreamResponse | None:
    """Raises:
    CapacityError, UpstreamError: no key came free in time, or every attempt failed.
    """
    assert x.parsed is not None
    request = x.cache_request
    if request is not None and not x.controls.no_cache:
        leading = x.state.coalescer.join(request.exact_key)
        if leading is None:
            x.leader_key = request.exact_key
        else:
            shared = await asyncio.shield(leading)
            if shared is not None:
                x.state.metrics.coalesced.inc()
                count_savings(x, shared)
                x.headers["X-Semcache-Coalesced"] = "true"
                return await serve_stored(x.request, x.parsed, shared, x.headers)
    x.attempt = await x.upstream.enter_async_context(
        x.state.router.send(
            "POST",
            x.request.rel_url.raw_path,
            headers=x.request.headers,
            body=orjson.dumps(x.outgoing),
            model=x.parsed.model,
            tokens=x.dialect.request_tokens(x.outgoing),
            priority=x.priority,
            query=x.request.rel_url.raw_query_string,
            buffered=True,
            api=x.dialect.api,
        )
    )
    return None
