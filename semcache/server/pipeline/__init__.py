"""The life of a request to a cached endpoint, one stage per module::

    parse      the body, the controls, the tenant; the dialect's cache request (or a bypass)
    transform  rewrites: a spent budget's downgrade (re-keyed), usage in streams (outgoing only)
    look_up    exact tier, semantic tier, verifier; a hit is served here and ends the request
               (history_match meaning: the earlier user turns are recognised first)
    admit      a miss may go upstream unless a spent budget refuses (429)
    defer      a miss marked X-Semcache-Priority: batch waits for a provider batch job (202)
    compress   a long chat history shortened for the upstream (outgoing only)
    coalesce   identical concurrent misses wait for the first one's answer
    batch      small requests that allow it merged into one upstream call, answers split
    send       the router: queue, retry, failover (unless a merged call answered)
    relay      the answer to the client as it arrives; the upstream connection released
    account    what the upstream charged: key limits, metrics, budgets
    store      a complete, valid answer under the request's key, after the response is
               released (identical requests wait for it on the coalescer meanwhile)

Each stage takes the :class:`~.exchange.Exchange` and returns a response to end the request
early, or ``None`` to go on; its time goes to ``semcache_stage_duration_seconds{stage}``.
Whatever fails, the upstream connection is released, what the upstream charged is billed, and
the requests waiting on this one's answer are released.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from semcache.server.pipeline.account import account
from semcache.server.pipeline.admit import admit
from semcache.server.pipeline.batch import batch
from semcache.server.pipeline.coalesce import coalesce
from semcache.server.pipeline.compress import compress
from semcache.server.pipeline.defer import defer
from semcache.server.pipeline.exchange import Exchange
from semcache.server.pipeline.lookup import look_up
from semcache.server.pipeline.parse import parse
from semcache.server.pipeline.relay import relay
from semcache.server.pipeline.send import send
from semcache.server.pipeline.store import release_followers, store
from semcache.server.pipeline.transform import transform

Stage = Callable[[Exchange], Awaitable[web.StreamResponse | None]]

STAGES: tuple[Stage, ...] = (
    parse,
    transform,
    look_up,
    admit,
    defer,
    compress,
    coalesce,
    batch,
    send,
    relay,
    account,
    store,
)


async def run(x: Exchange, stages: tuple[Stage, ...] = STAGES) -> web.StreamResponse:
    timings = x.state.metrics.stage_duration
    try:
        for stage in stages:
            started = time.perf_counter()
            if stage is send:
                x.state.metrics.overhead.labels(x.dialect.path).observe(started - x.started)
            early = await stage(x)
            timings.labels(stage.__name__).observe(time.perf_counter() - started)
            if early is not None:
                return early
        assert x.response is not None
        return x.response
    finally:
        await x.upstream.aclose()
        await account(x)
        if not x.storing:  # else released once the answer is stored (see store)
            release_followers(x)


__all__ = ["STAGES", "Exchange", "Stage", "run"]
