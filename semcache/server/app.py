"""The application factory of the sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from semcache.budgets import SpendLedger
from semcache.cache import SemanticCache
from semcache.clients import Clients
from semcache.coalescing import Coalescer
from semcache.compression import Compressor
from semcache.dialects import CHAT, COMPLETIONS, DIALECTS, RESPONSES
from semcache.lookup_batching import LookupBatcher
from semcache.metrics import Metrics
from semcache.server import accounting, admin, azure_paths, proxy, status_page
from semcache.server.after_response import AfterResponse
from semcache.server.batch_jobs import JOBS_PATH, BatchJobs, job_status
from semcache.server.bodies import body_middleware
from semcache.server.budget_webhook import BudgetWebhook
from semcache.server.compression import ContextCompression
from semcache.server.controls import caller_key
from semcache.server.error_responses import error_middleware, error_response
from semcache.server.request_batching import request_batching
from semcache.server.shadow_checks import ShadowChecks
from semcache.server.state import CLIENT, STATE, State
from semcache.server.status_history import StatusHistory
from semcache.settings import ServerConfig
from semcache.shared.breakers import SharedCircuitBreaker, breaker_name
from semcache.shared.counters import DiskCounters, SharedCounters
from semcache.shared.flights import SharedFlights
from semcache.shared.limits import SharedKeyLimiter, bucket_name
from semcache.shared.link import RedisLink
from semcache.upstream.breaker import CircuitBreaker
from semcache.upstream.health import HealthChecks
from semcache.upstream.limits import KeyLimiter
from semcache.upstream.router import BreakerFactory, LimiterFactory, Router, RoutingPolicy
from semcache.upstream.specs import KeySpec, UpstreamSpec, describe, passthrough

logger = logging.getLogger("semcache.server")


def create_app(
    config: ServerConfig,
    *,
    cache: SemanticCache | None = None,
    router: Router | None = None,
    ledger: SpendLedger | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The sidecar as an aiohttp application.

    ``cache``, ``router`` and ``ledger`` (the budgets' spend) default to ones built from
    ``config`` and closed with the app; ones passed in belong to the caller, who closes them.
    ``clock`` drives the rate limits (tests).
    """
    middlewares: list[Middleware] = [status_middleware, error_middleware]
    if config.clients:
        middlewares.append(client_middleware(Clients(config.clients)))
    middlewares.append(
        body_middleware(
            max_bytes=config.max_body_bytes,
            timeout_s=config.body_read_timeout_s,
            max_pending=config.max_pending_bodies,
        )
    )
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=middlewares,
        # After refusing a body (408, 413), read and drop what a client still sends for one
        # second, not aiohttp's ten: a stalled client would hold its connection that long.
        handler_args={"lingering_time": 1.0},
    )
    app.cleanup_ctx.append(_resources(config, cache, router, ledger, clock))
    for dialect in DIALECTS:
        app.router.add_post(dialect.path, proxy.cached_endpoint(dialect))
    # Azure OpenAI's clients: its v1 API (/openai/v1/..., the model in the body) and the
    # deployment paths (/openai/deployments/{deployment}/..., the model named by the path).
    for dialect in (CHAT, COMPLETIONS, RESPONSES):
        app.router.add_post(azure_paths.PREFIX + dialect.path, proxy.cached_endpoint(dialect))
    for dialect in (CHAT, COMPLETIONS):
        path = azure_paths.DEPLOYMENT + dialect.path.removeprefix("/v1")
        app.router.add_post(path, proxy.cached_endpoint(dialect))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    admin.add_routes(app)
    status_page.add_routes(app)
    app.router.add_get(JOBS_PATH + "/{id}", job_status)
    app.router.add_route("*", "/v1/{tail:.*}", proxy.forward_verbatim)
    app.router.add_route("*", azure_paths.PREFIX + "/v1/{tail:.*}", proxy.forward_verbatim)
    app.router.add_route("*", azure_paths.DEPLOYMENT + "/{tail:.*}", proxy.forward_verbatim)
    return app


@web.middleware
async def status_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the responses to the API by status class (the success rate of dashboards and
    alerts), errors turned into responses by the error middleware included."""
    response = await handler(request)
    if request.path.startswith("/v1/") and STATE in request.app:
        status = response.status
        code = "429" if status == 429 else f"{status // 100}xx"
        request.app[STATE].metrics.responses.labels(code).inc()
    return response


def client_middleware(clients: Clients) -> Middleware:
    """Serve ``/v1/*`` to the configured clients only, and note which one asked."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            name = clients.identify(caller_key(request.headers))
            if name is None:
                return error_response(
                    401,
                    "Incorrect API key provided: this sidecar serves its configured clients "
                    "only (Authorization: Bearer <client key>)",
                    code="invalid_api_key",
                )
            request[CLIENT] = name
        return await handler(request)

    return middleware


def _resources(
    config: ServerConfig,
    cache: SemanticCache | None,
    given_router: Router | None,
    given_ledger: SpendLedger | None,
    clock: Callable[[], float],
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        # "is None", not "or": an empty cache is falsy (it has a length).
        own_cache = cache is None
        metrics_ = Metrics()
        # One link to Redis: the cache's own when it was given one, else made here.
        link = None if cache is None else cache.redis_link
        own_link = link is None
        if link is None:
            link = config.redis_link()
        if link is not None:
            link.on_error = metrics_.redis_errors.inc
        the_cache = (
            await asyncio.to_thread(
                SemanticCache, config.cache_dir, config=config.cache_config(), redis=link
            )
            if cache is None
            else cache
        )
        router = given_router or Router(
            config.upstreams or passthrough(config.upstream),
            policy=config.routing_policy(),
            timeout_s=config.upstream_timeout_s,
            connect_timeout_s=config.upstream_connect_timeout_s,
            metrics=metrics_,
            clock=clock,
            limiter=None if link is None else _shared_limits(link, config, clock),
            breaker=None if link is None else _shared_breakers(link),
        )
        _gauge_router(metrics_, router)
        health = (
            HealthChecks(
                router,
                interval_s=config.health_check_interval_s,
                timeout_s=config.health_check_timeout_s,
                on_probe=lambda name, outcome, _: metrics_.health_checks.labels(
                    name, outcome
                ).inc(),
            )
            if config.health_check_interval_s > 0
            else None
        )
        ledger = given_ledger
        if ledger is None and config.budgets is not None and config.budgets.active:
            ledger = await asyncio.to_thread(_ledger, config, link)
        metrics_.track_entries(lambda: len(the_cache))
        if config.max_error_rate is not None:
            metrics_.hold_false_hits_to(config.max_error_rate)
        batcher = LookupBatcher(
            the_cache.alookup_many,
            max_wait_ms=config.lookup_batch_wait_ms,
            max_size=config.lookup_batch_size,
            busy_wait_ms=config.lookup_busy_wait_ms,
            busy_hit_rate=config.lookup_busy_hit_rate,
        )
        batcher.on_batch = metrics_.lookup_batch_size.observe
        shadow = ShadowChecks(
            fraction=config.shadow_fraction,
            agreement=config.shadow_agreement,
            cache=the_cache,
            router=router,
            metrics=metrics_,
            account=lambda attempt, model, answer, tenant, dialect: accounting.account(
                app[STATE], attempt, model, answer, tenant, dialect=dialect
            ),
        )
        compression = ContextCompression(
            config, Compressor(the_cache.vectors.embedder, config.compression_settings())
        )
        batching = request_batching(
            lambda: app[STATE],
            window_s=config.batch_window_ms / 1000,
            max_items=config.batch_max_items,
        )
        batch_jobs = BatchJobs(
            Path(config.cache_dir) / "jobs",
            lambda: app[STATE],
            window_s=config.batch_jobs_window_s,
            max_items=config.batch_jobs_max_items,
            poll_s=config.batch_jobs_poll_s,
        )
        flights = None if link is None else SharedFlights(link)
        status = StatusHistory(metrics_.registry, interval_s=config.status_interval_s)
        webhook_url = None if config.budgets is None else config.budgets.warn_webhook
        webhook = (
            None
            if ledger is None or webhook_url is None
            else BudgetWebhook(
                webhook_url, on_delivery=lambda o: metrics_.budget_webhook.labels(o).inc()
            )
        )
        if ledger is not None:
            await asyncio.to_thread(accounting.gauge_budgets, ledger, metrics_)
        app[STATE] = State(
            config=config,
            cache=the_cache,
            router=router,
            ledger=ledger,
            batcher=batcher,
            coalescer=Coalescer(),
            metrics=metrics_,
            prices=config.prices,
            shadow=shadow,
            compression=compression,
            batching=batching,
            batch_jobs=batch_jobs,
            flights=flights,
            after_response=AfterResponse(metrics_.after_response.set),
            budget_webhook=webhook,
            health=health,
            status=status,
        )
        checkpoints = None
        try:
            await the_cache.awarm_up()  # the first request should not pay for loading the model
            await router.start()
            await batch_jobs.start()
            if webhook is not None:
                await webhook.start()
            if health is not None:
                health.start()
            status.start()
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
            if health is not None:
                await health.close()
            await status.close()
            await app[STATE].after_response.drain()  # answers served are stored
            await batcher.close()
            await batching.windows.close()
            await batch_jobs.close()
            await shadow.close()
            if webhook is not None:
                await webhook.close()
            await asyncio.to_thread(compression.close)
            if given_router is None:
                await router.close()
            if ledger is not None and given_ledger is None:
                ledger.close()
            if own_cache:
                await asyncio.to_thread(the_cache.close)
            if flights is not None:
                flights.close()
            if link is not None and own_link:
                link.close()

    return resources


def _shared_limits(
    link: RedisLink, config: ServerConfig, clock: Callable[[], float]
) -> LimiterFactory:
    """Each key's limits on Redis, shared by every sidecar that has the key."""

    def make(upstream: UpstreamSpec, key: KeySpec) -> KeyLimiter:
        return SharedKeyLimiter(
            key.id,
            rpm=upstream.rpm,
            tpm=upstream.tpm,
            clock=clock,
            link=link,
            name=bucket_name(key.secret, upstream.base_url),
            local_share=config.redis_fallback_share,
        )

    return make


def _shared_breakers(link: RedisLink) -> BreakerFactory:
    """Each upstream's breaker opened for every sidecar when one opens it."""

    def make(
        spec: UpstreamSpec, policy: RoutingPolicy, clock: Callable[[], float]
    ) -> CircuitBreaker:
        return SharedCircuitBreaker(
            failures=policy.breaker_failures,
            reset_s=policy.breaker_reset_s,
            clock=clock,
            name=spec.name,
            link=link,
            key=breaker_name(spec.base_url),
        )

    return make


def _ledger(config: ServerConfig, link: RedisLink | None) -> SpendLedger:
    """The spend ledger: on disk, or in Redis (shared by every sidecar) with the disk standing
    in while Redis is away."""
    assert config.budgets is not None
    directory = Path(config.cache_dir) / "budgets"
    counters = None
    if link is not None:
        counters = SharedCounters(link, DiskCounters(directory))
    return SpendLedger(directory, config.budgets, clock=time.time, counters=counters)


def _gauge_router(metrics: Metrics, router: Router) -> None:
    """Export each upstream's breaker and rotation, and each pool key's headroom and limits,
    read when scraped."""
    for name, breaker in router.breakers.items():
        metrics.breaker_open.labels(name).set_function(_open(breaker))
        metrics.upstream_up.labels(name).set_function(_in_rotation(router, name))
    for target in router.targets:
        if target.limiter is None:
            continue
        labels = (target.upstream.name, target.id)
        metrics.key_headroom.labels(*labels).set_function(target.limiter.headroom)
        for unit, limit in (("rpm", target.upstream.rpm), ("tpm", target.upstream.tpm)):
            if limit is not None:
                metrics.key_limit.labels(*labels, unit).set(limit)


def _open(breaker: CircuitBreaker) -> Callable[[], float]:
    return lambda: float(breaker.state != breaker.CLOSED)


def _in_rotation(router: Router, upstream: str) -> Callable[[], float]:
    return lambda: float(router.in_rotation(upstream))


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
            "lookup_batching": {
                "max_wait_ms": state.config.lookup_batch_wait_ms,
                "max_size": state.config.lookup_batch_size,
                "recent_mean_batch": sum(sizes) / len(sizes) if sizes else 0.0,
            },
            "batching": {
                "window_ms": state.config.batch_window_ms,
                "max_items": state.config.batch_max_items,
                "waiting": state.batching.windows.waiting,
                **state.batching.totals.describe(),
            },
            "batch_jobs": state.batch_jobs.describe(),
            "coalescing_in_flight": len(state.coalescer),
            "shadow": {
                "fraction": state.shadow.sampler.fraction,
                "checks": state.shadow.sampler.checks,
                "false_hit_rate": state.shadow.sampler.false_hit_rate(),
            },
            "upstreams": describe(state.router.upstreams),
            "health": None if state.health is None else state.health.describe(),
            "keys": state.router.describe(),
            "queue_length": state.router.queue_length,
            "budgets": None if state.ledger is None else state.ledger.describe(),
            "compression": {
                "mode": state.config.compression,
                **state.compression.totals.describe(),
            },
            "clients": [client.name for client in state.config.clients],
        }
    )
