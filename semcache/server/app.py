"""The application factory of the sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from semcache.batching import LookupBatcher
from semcache.cache import SemanticCache
from semcache.coalescing import Coalescer
from semcache.metrics import Metrics
from semcache.pricing import PriceTable
from semcache.server import admin, proxy
from semcache.server.errors import error_middleware
from semcache.server.state import STATE, State
from semcache.settings import ServerConfig
from semcache.upstream import Upstream

logger = logging.getLogger("semcache.server")


def create_app(
    config: ServerConfig,
    *,
    cache: SemanticCache | None = None,
    upstream: Upstream | None = None,
    prices: PriceTable | None = None,
) -> web.Application:
    """The sidecar as an aiohttp application.

    ``cache`` and ``upstream`` default to ones built from ``config`` and closed with the app;
    ones passed in belong to the caller, who closes them.
    """
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[error_middleware])
    app.cleanup_ctx.append(_resources(config, cache, upstream, prices or PriceTable()))
    app.router.add_post("/v1/chat/completions", proxy.chat_completions)
    app.router.add_post("/v1/completions", proxy.completions)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    admin.add_routes(app)
    app.router.add_route("*", "/v1/{tail:.*}", proxy.forward_verbatim)
    return app


def _resources(
    config: ServerConfig,
    cache: SemanticCache | None,
    upstream: Upstream | None,
    prices: PriceTable,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        # "is None", not "or": an empty cache is falsy (it has a length).
        own_cache = cache is None
        the_cache = (
            await asyncio.to_thread(SemanticCache, config.cache_dir, config=config.cache_config())
            if cache is None
            else cache
        )
        own_upstream = upstream is None
        the_upstream = (
            Upstream(
                config.upstream,
                timeout_s=config.upstream_timeout_s,
                connect_timeout_s=config.upstream_connect_timeout_s,
            )
            if upstream is None
            else upstream
        )
        metrics_ = Metrics()
        metrics_.track_entries(lambda: len(the_cache))
        batcher = LookupBatcher(
            the_cache.alookup_many,
            max_wait_ms=config.batch_max_wait_ms,
            max_size=config.batch_max_size,
        )
        batcher.on_batch = metrics_.batch_size.observe
        app[STATE] = State(
            config=config,
            cache=the_cache,
            upstream=the_upstream,
            batcher=batcher,
            coalescer=Coalescer(),
            metrics=metrics_,
            prices=prices,
        )
        checkpoints = None
        try:
            await the_cache.awarm_up()  # the first request should not pay for loading the model
            await the_upstream.start()
            if config.checkpoint_interval_s > 0:
                checkpoints = asyncio.get_running_loop().create_task(
                    _checkpoint_every(the_cache, config.checkpoint_interval_s)
                )
            yield
        finally:
            if checkpoints is not None:
                checkpoints.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checkpoints
            await batcher.close()
            if own_upstream:
                await the_upstream.close()
            if own_cache:
                await asyncio.to_thread(the_cache.close)

    return resources


async def _checkpoint_every(cache: SemanticCache, interval_s: float) -> None:
    """Save the index snapshot now and then, so a crash costs a short rebuild, not a long one."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await cache.acheckpoint()
        except Exception:  # a failed checkpoint costs a rebuild after a crash, nothing more
            logger.exception("saving the index snapshot failed")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    sizes = state.batcher.batch_sizes
    return web.json_response(
        {
            "cache": state.cache.stats(),
            "batching": {
                "max_wait_ms": state.config.batch_max_wait_ms,
                "max_size": state.config.batch_max_size,
                "recent_mean_batch": sum(sizes) / len(sizes) if sizes else 0.0,
            },
            "coalescing_in_flight": len(state.coalescer),
            "upstream": state.upstream.base_url,
        }
    )
