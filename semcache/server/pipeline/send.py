"""Stage ``send``: a miss goes upstream, unless a merged call answered it already (see
:mod:`.batch`). The router picks an upstream and a key, queues, retries and fails over (see
:mod:`semcache.upstream.router`). The upstream answer stays open for :mod:`.relay`."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from semcache.server import azure_paths
from semcache.server.pipeline.exchange import Exchange

# A request body over this many bytes has its tokens counted on a worker thread (about 3 ms of
# the tokenizer's time at this size; a prompt of megabytes held every other request for a
# fraction of a second).
COUNT_ON_LOOP_BYTES = 32 * 1024


async def send(x: Exchange) -> web.StreamResponse | None:
    """Raises:
    CapacityError, UpstreamError: no key came free in time, or every attempt failed.
    """
    assert x.parsed is not None
    if x.response is not None:
        return None
    body = orjson.dumps(x.outgoing)
    if len(body) <= COUNT_ON_LOOP_BYTES:
        tokens = x.dialect.request_tokens(x.outgoing)
    else:  # counting megabytes of text takes the tokenizer a while: not on the event loop
        tokens = await asyncio.to_thread(x.dialect.request_tokens, x.outgoing)
    x.attempt = await x.upstream.enter_async_context(
        x.state.router.send(
            "POST",
            x.dialect.path,
            headers=x.request.headers,
            body=body,
            model=x.parsed.model,
            tokens=tokens,
            priority=x.priority,
            query=azure_paths.forwarded_query(x.request),
            buffered=True,
            api=x.dialect.api,
        )
    )
    return None
