"""Stage ``send``: a miss goes upstream, unless a merged call answered it already (see
:mod:`.batch`). The router picks an upstream and a key, queues, retries and fails over (see
:mod:`semcache.upstream.router`). The upstream answer stays open for :mod:`.relay`."""

from __future__ import annotations

import orjson
from aiohttp import web

from semcache.server import azure_paths
from semcache.server.pipeline.exchange import Exchange


async def send(x: Exchange) -> web.StreamResponse | None:
    """Raises:
    CapacityError, UpstreamError: no key came free in time, or every attempt failed.
    """
    assert x.parsed is not None
    if x.response is not None:
        return None
    x.attempt = await x.upstream.enter_async_context(
        x.state.router.send(
            "POST",
            x.dialect.path,
            headers=x.request.headers,
            body=orjson.dumps(x.outgoing),
            model=x.parsed.model,
            tokens=x.dialect.request_tokens(x.outgoing),
            priority=x.priority,
            query=azure_paths.forwarded_query(x.request),
            buffered=True,
            api=x.dialect.api,
        )
    )
    return None
