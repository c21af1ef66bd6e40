"""Stage ``store``: a complete, valid answer is stored under the request's key (never a
bypass, a no-store request or an answer the client did not read to the end). A failure to
store is counted and logged; the client has its answer anyway."""

from __future__ import annotations

import logging

from aiohttp import web

from semcache.server.pipeline.exchange import Exchange

logger = logging.getLogger("semcache.server")


async def store(x: Exchange) -> web.StreamResponse | None:
    request = x.cache_request
    if x.answer is None or request is None or not x.storable:
        return None
    try:
        await x.state.cache.astore(request, x.answer)
    except Exception:
        logger.exception("storing an answer failed; the client got it anyway")
        x.state.metrics.cache_errors.labels("store").inc()
    return None
