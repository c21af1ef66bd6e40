"""One reliable endpoint over many upstreams and keys.

A request goes through:

1. **choice**: among the upstreams that serve its model and whose breaker lets requests
   through, the lowest ``priority`` number with a key free now; among those, the key with the
   most headroom (times the upstream's ``weight``). Without ``[[upstreams]]`` there is one
   upstream, reached with the caller's own key, and no limits of ours.
2. **queue**: when no key is free, the request waits, ordered by priority (``high``,
   ``normal``, ``low``) then arrival. A waiting request holds back the keys it could use from
   requests behind it, so priority order is strict. Past ``max_wait_s`` or ``max_length`` the
   caller gets :class:`QueueTimeoutError` / :class:`QueueFullError` (HTTP 429 with
   ``Retry-After``).
3. **retries**: a 429, a 5xx, a timeout or a connection error is retried up to ``max_retries``
   times on another key or upstream when there is one: at once after a 429 (that key pauses
   for its ``Retry-After``), after an exponential backoff with jitter otherwise. A breaker per
   upstream opens after ``breaker_failures`` failures in a row and lets one probe through after
   ``breaker_reset_s``. Only what happens before the response is handed to the caller is
   retried: once the caller holds a response (and may have streamed a byte of it), never.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict

from semcache.errors import (
    InvalidRequestError,
    QueueFullError,
    QueueTimeoutError,
    UpstreamError,
    UpstreamsDownError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from semcache.upstream.breaker import CircuitBreaker
from semcache.upstream.client import Upstream, confined_path, forwardable_headers
from semcache.upstream.limits import KeyLimiter, Reservation, retry_after
from semcache.upstream.specs import KeySpec, UpstreamSpec

PRIORITIES = {"high": 0, "normal": 1, "low": 2}

# The caller's credentials and account headers, replaced when a pool key is used: none of the
# caller's may travel beside the pool's.
_CALLER_ACCOUNT = (
    "authorization",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
)
ANTHROPIC_VERSION = "2023-06-01"  # sent to an anthropic upstream when the caller sent none


class RouterMetrics(Protocol):
    """The Prometheus collectors the router reports to (the sidecar's ``Metrics`` has them);
    the upstream layer depends on this shape, not on the sidecar."""

    upstream_requests: Any  # Counter: upstream, key, status
    upstream_latency: Any  # Histogram: upstream
    upstream_retries: Any  # Counter: reason
    queue_rejections: Any  # Counter: reason
    queue_length: Any  # Gauge
    queue_wait: Any  # Histogram


@dataclass(frozen=True)
class RoutingPolicy:
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    queue_max_wait_s: float = 30.0
    queue_max_length: int = 1000


# The limits of one key of one upstream (local by default; shared by several sidecars with
# semcache.shared.limits).
LimiterFactory = Callable[[UpstreamSpec, KeySpec], KeyLimiter]
# The circuit breaker of one upstream (local by default; shared with semcache.shared.breakers).
BreakerFactory = Callable[[UpstreamSpec, "RoutingPolicy", Callable[[], float]], CircuitBreaker]


class Target:
    """One way to send a request: an upstream and one of its keys (or the caller's)."""

    def __init__(
        self,
        upstream: UpstreamSpec,
        key: KeySpec | None,
        client: Upstream,
        breaker: CircuitBreaker,
        limiter: LimiterFactory,
    ) -> None:
        self.upstream = upstream
        self.key = key
        self.client = client
        self.breaker = breaker
        self.id = key.id if key is not None else upstream.name
        limited = key is not None and (upstream.rpm is not None or upstream.tpm is not None)
        self.limiter = limiter(upstream, key) if limited and key is not None else None

    def wait_time(self, tokens: int) -> float:
        breaker = 0.0 if self.breaker.allows() else max(self.breaker.retry_in(), 0.05)
        limit = 0.0 if self.limiter is None else self.limiter.wait_time(tokens)
        return max(breaker, limit)

    def score(self) -> float:
        headroom = 1.0 if self.limiter is None else self.limiter.headroom()
        return headroom * self.upstream.weight

    def url(self, path: str, model: str | None, query: str) -> str:
        """Where ``path`` (``/v1/...``) goes on this upstream."""
        tail = path.removeprefix("/v1")
        spec = self.upstream
        if spec.kind != "azure":
            return self.client.url(path, query)
        deployment = spec.deployments.get(model or "")
        prefix = f"/openai/deployments/{deployment}" if deployment else "/openai"
        params = f"api-version={spec.api_version}" + (f"&{query}" if query else "")
        return f"{spec.base_url}{prefix}{tail}?{params}"

    def headers(self, caller: Mapping[str, str]) -> CIMultiDict[str]:
        headers = forwardable_headers(caller)
        if self.key is None:
            return headers  # passthrough: the caller's own key
        for name in _CALLER_ACCOUNT:
            headers.popall(name, None)
        if self.upstream.kind == "azure":
            headers["api-key"] = self.key.secret
        elif self.upstream.kind == "anthropic":
            headers["x-api-key"] = self.key.secret
            headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
        else:
            headers["Authorization"] = f"Bearer {self.key.secret}"
        return headers


def _local_breaker(
    spec: UpstreamSpec, policy: RoutingPolicy, clock: Callable[[], float]
) -> CircuitBreaker:
    return CircuitBreaker(
        failures=policy.breaker_failures, reset_s=policy.breaker_reset_s, clock=clock,
        name=spec.name,
    )  # fmt: skip


def _local_limiter(clock: Callable[[], float]) -> LimiterFactory:
    def make(upstream: UpstreamSpec, key: KeySpec) -> KeyLimiter:
        return KeyLimiter(key.id, rpm=upstream.rpm, tpm=upstream.tpm, clock=clock)

    return make


async def _read_whole(response: aiohttp.ClientResponse) -> None:
    """Read a response body into the response (``read()`` keeps it), translating a failure.

    Raises:
        UpstreamUnavailableError: the connection broke before the end of the body.
        UpstreamTimeoutError: the body stalled past the read timeout.
    """
    try:
        await response.read()
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeoutError(f"the upstream's answer stalled: {exc!r}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailableError(f"the upstream's answer broke off: {exc!r}") from exc


@dataclass(eq=False)
class _Waiter:
    priority: int
    seq: int
    model: str | None
    api: str | None
    tokens: int
    exclude: set[str]
    enqueued: float
    future: asyncio.Future[tuple[Target, Reservation | None]]
    key_id: str | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


@dataclass
class Attempt:
    """The response the caller holds, and how to account for it."""

    response: aiohttp.ClientResponse
    target: Target
    retries: int
    _reservation: Reservation | None = field(repr=False, default=None)
    _router: Router | None = field(repr=False, default=None)

    def settle(self, total_tokens: int | None) -> None:
        """Correct the key's token count from the answer's ``usage`` (``None``: unknown)."""
        if self._reservation is not None and self.target.limiter is not None:
            self.target.limiter.settle(self._reservation, total_tokens)
        if self._router is not None:
            self._router.dispatch()


class Router:
    def __init__(
        self,
        upstreams: Sequence[UpstreamSpec],
        *,
        policy: RoutingPolicy | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        limiter: LimiterFactory | None = None,
        breaker: BreakerFactory | None = None,
    ) -> None:
        """``limiter`` makes each key's limits (default: local buckets on ``clock``),
        ``breaker`` each upstream's circuit breaker (default: local)."""
        if not upstreams:
            raise ValueError("a router needs at least one upstream")
        self.policy = policy or RoutingPolicy()
        self.metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self.targets: list[Target] = []
        self.clients: dict[str, Upstream] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        for spec in upstreams:
            client = Upstream(
                spec.base_url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
            )
            circuit = (breaker or _local_breaker)(spec, self.policy, clock)
            self.clients[spec.name] = client
            self.breakers[spec.name] = circuit
            make_limiter = limiter or _local_limiter(clock)
            for key in spec.keys or (None,):
                self.targets.append(Target(spec, key, client, circuit, make_limiter))
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._out_of_rotation: set[str] = set()  # upstreams whose health checks fail

    @property
    def upstreams(self) -> list[UpstreamSpec]:
        seen: dict[str, UpstreamSpec] = {}
        for target in self.targets:
            seen.setdefault(target.upstream.name, target.upstream)
        return list(seen.values())

    async def start(self) -> None:
        for client in self.clients.values():
            await client.start()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.cancel()
        for client in self.clients.values():
            await client.close()

    @property
    def queue_length(self) -> int:
        return len(self._waiters)

    def set_in_rotation(self, upstream: str, up: bool) -> None:
        """Take an upstream out of rotation (its health checks fail) or bring it back: while
        out, requests go to the other upstreams that serve them, if any."""
        changed = up == (upstream in self._out_of_rotation)
        if up:
            self._out_of_rotation.discard(upstream)
        else:
            self._out_of_rotation.add(upstream)
        if changed and self._waiters:
            self.dispatch()

    def in_rotation(self, upstream: str) -> bool:
        return upstream not in self._out_of_rotation

    def backlogged(self, model: str | None = None, tokens: int = 1) -> bool:
        """Whether a request now would have to wait: others are queued, or no key is free."""
        if self._waiters:
            return True
        return all(t.wait_time(tokens) > 0 for t in self._eligible(model, set()))

    def pooled(self, model: str | None, api: str | None = None) -> bool:
        """Whether every upstream that could take this request sends a pool key of its own
        (none passes the caller's credentials through)."""
        return all(t.key is not None for t in self._eligible(model, set(), api))

    # -- sending ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        model: str | None,
        tokens: int = 1,
        priority: int = PRIORITIES["normal"],
        query: str = "",
        buffered: bool = False,
        api: str | None = None,
        key_id: str | None = None,
    ) -> AsyncIterator[Attempt]:
        """Send with retries and failover; the response is read inside the ``async with``.

        ``path`` is the raw (percent-encoded) path under ``/v1/``. With ``buffered``, a
        response that is not an event stream is read whole before it is handed over, so a body
        cut short or stalled is retried like a failed connection (nothing reached the caller).
        ``api`` ("openai", "anthropic") keeps the request to upstreams that speak it;
        ``key_id`` to that one key (a provider's batch job is polled with the key that made it).

        Raises:
            InvalidRequestError: ``path`` is not a plain ``/v1/`` path, or no upstream serves
                ``model``.
            UpstreamsDownError: every upstream that serves ``model`` has its breaker open.
            QueueFullError, QueueTimeoutError: no key came free in time.
            UpstreamError: the last attempt failed without a complete HTTP answer.
        """
        path = confined_path(path)
        if not self._eligible(model, set(), api, key_id):
            raise InvalidRequestError(
                f"no configured upstream serves the model {model!r}"
                + (f" through the {api} API" if api else "")
                + (f" with the key {key_id}" if key_id else ""),
                field="model",
            )
        self._check_some_up(model, api)
        deadline = self._clock() + self.policy.queue_max_wait_s
        exclude: set[str] = set()
        attempt = 0
        while True:
            target, reservation = await self._acquire(
                model, api, tokens, priority, exclude, deadline, key_id
            )
            target.breaker.on_send()
            started = self._clock()
            stack = contextlib.AsyncExitStack()
            try:
                response = await stack.enter_async_context(
                    target.client.request(
                        method,
                        path,
                        headers=target.headers(headers),
                        body=body,
                        url=target.url(path, model, query),
                    )
                )
                if buffered and response.content_type != "text/event-stream":
                    await _read_whole(response)
            except UpstreamError as exc:
                await stack.aclose()
                target.breaker.on_failure()
                if reservation is not None and target.limiter is not None:
                    target.limiter.release(reservation)
                self._count(target, "error", started)
                if attempt >= self.policy.max_retries:
                    raise
                self._check_some_up(model, api)
                exclude.add(target.id)
                self._count_retry(type(exc).__name__)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            status = response.status
            if target.limiter is not None:
                target.limiter.learn(response.headers, status)
            self._count(target, str(status), started)
            retryable = status == 429 or status >= 500
            if retryable and attempt < self.policy.max_retries:
                if status >= 500:
                    target.breaker.on_failure()
                else:
                    target.breaker.on_success()  # a rate limit is not ill health
                await stack.aclose()
                if status >= 500:
                    self._check_some_up(model, api)
                exclude.add(target.id)
                self._count_retry(str(status))
                if status >= 500 or not self._has_alternative(model, api, exclude):
                    pause = retry_after({k.lower(): v for k, v in response.headers.items()})
                    await asyncio.sleep(max(self._backoff(attempt), min(pause or 0.0, 60.0)))
                attempt += 1
                self.dispatch()
                continue
            if status >= 500:
                target.breaker.on_failure()
            else:
                target.breaker.on_success()
            try:
                yield Attempt(response, target, attempt, reservation, self)
            finally:
                await stack.aclose()
                self.dispatch()
            return

    def _check_some_up(self, model: str | None, api: str | None = None) -> None:
        """Raise at once, rather than queue until the wait runs out, when every upstream that
        serves ``model`` has its breaker open.

        Raises:
            UpstreamsDownError: with the time until the first breaker lets a probe through.
        """
        breakers = {t.upstream.name: t.breaker for t in self._eligible(model, set(), api)}
        if any(b.state != b.OPEN for b in breakers.values()):
            return
        soonest = min(b.retry_in() for b in breakers.values())
        raise UpstreamsDownError(
            f"every upstream that serves {model or 'this request'} is failing "
            f"({', '.join(sorted(breakers))}); the next probe is in {soonest:.0f} s",
            retry_after_s=soonest,
        )

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2.0**attempt)
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _has_alternative(self, model: str | None, api: str | None, exclude: set[str]) -> bool:
        return any(t.id not in exclude for t in self._eligible(model, set(), api))

    # -- the queue ------------------------------------------------------------------------

    def _eligible(
        self,
        model: str | None,
        exclude: set[str],
        api: str | None = None,
        key_id: str | None = None,
    ) -> list[Target]:
        """Targets that speak ``api`` and serve ``model`` (only ``key_id`` when given), those
        of upstreams in rotation only, unless none is; ``exclude`` is ignored when it would
        leave none."""
        serving = [
            t
            for t in self.targets
            if t.upstream.speaks(api)
            and (model is None or t.upstream.serves(model))
            and (key_id is None or t.id == key_id)
        ]
        rotating = [t for t in serving if t.upstream.name not in self._out_of_rotation]
        serving = rotating or serving
        kept = [t for t in serving if t.id not in exclude]
        return kept or serving

    async def _acquire(
        self,
        model: str | None,
        api: str | None,
        tokens: int,
        priority: int,
        exclude: set[str],
        deadline: float,
        key_id: str | None = None,
    ) -> tuple[Target, Reservation | None]:
        if len(self._waiters) >= self.policy.queue_max_length:
            self._count_rejection("full")
            raise QueueFullError(
                f"all {len(self.targets)} upstream keys are at their limits and "
                f"{len(self._waiters)} requests are already waiting",
                retry_after_s=self._soonest(model, tokens, exclude) or 1.0,
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            priority,
            next(self._seq),
            model,
            api,
            tokens,
            exclude,
            self._clock(),
            loop.create_future(),
            key_id,
        )
        heapq.heappush(self._waiters, waiter)
        self.dispatch()
        try:
            return await asyncio.wait_for(
                asyncio.shield(waiter.future), timeout=max(0.0, deadline - self._clock())
            )
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()  # assigned at the very last moment
            waiter.future.cancel()
            self._count_rejection("timeout")
            raise QueueTimeoutError(
                f"no upstream key came free within {self.policy.queue_max_wait_s:g} s",
                retry_after_s=self._soonest(model, tokens, exclude) or 1.0,
            ) from None
        except asyncio.CancelledError:
            # The caller went away; a key assigned meanwhile is given back unused.
            if waiter.future.done() and not waiter.future.cancelled():
                target, reservation = waiter.future.result()
                if reservation is not None and target.limiter is not None:
                    target.limiter.release(reservation)
            raise
        finally:
            self._remove(waiter)

    def _remove(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            heapq.heapify(self._waiters)
        self._gauge_queue()
        if not waiter.future.done():
            waiter.future.cancel()
        self.dispatch()

    def dispatch(self) -> None:
        """Give free keys to waiting requests in priority order; set a timer for the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held: set[str] = set()  # keys a waiting request ahead could use
        soonest = math.inf
        now = self._clock()
        for waiter in sorted(self._waiters):
            if waiter.future.done():
                continue
            eligible = self._eligible(waiter.model, waiter.exclude, waiter.api, waiter.key_id)
            candidates = [t for t in eligible if t.id not in held]
            free = [t for t in candidates if t.wait_time(waiter.tokens) <= 0]
            # Best first: the lowest priority number, then the most headroom. A key shared
            # with other sidecars may be gone by the time it is taken: then the next one.
            free.sort(key=lambda t: (t.upstream.priority, -t.score()))
            assigned = False
            for target in free:
                reservation = None
                if target.limiter is not None:
                    reservation = target.limiter.try_reserve(waiter.tokens)
                    if reservation is None:
                        continue
                waiter.future.set_result((target, reservation))
                if self.metrics is not None:
                    self.metrics.queue_wait.observe(now - waiter.enqueued)
                assigned = True
                break
            if assigned:
                continue
            waits = [t.wait_time(waiter.tokens) for t in candidates]
            soonest = min([soonest, *waits])
            held.update(t.id for t in eligible)
        self._gauge_queue()
        pending = [w for w in self._waiters if not w.future.done()]
        if pending and math.isfinite(soonest):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(soonest, 0.001), self.dispatch)
        elif pending:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(1.0, self.dispatch)

    def _soonest(self, model: str | None, tokens: int, exclude: set[str]) -> float | None:
        waits = [t.wait_time(tokens) for t in self._eligible(model, exclude)]
        finite = [w for w in waits if math.isfinite(w)]
        return min(finite) if finite else None

    # -- metrics -------------------------------------------------------------------------

    def _count(self, target: Target, status: str, started: float) -> None:
        if self.metrics is None:
            return
        self.metrics.upstream_requests.labels(target.upstream.name, target.id, status).inc()
        self.metrics.upstream_latency.labels(target.upstream.name).observe(self._clock() - started)

    def _count_retry(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.upstream_retries.labels(reason).inc()

    def _count_rejection(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.queue_rejections.labels(reason).inc()

    def _gauge_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_length.set(sum(not w.future.done() for w in self._waiters))

    def describe(self) -> list[dict[str, object]]:
        """State of every key, for ``/stats``."""
        return [
            {
                "upstream": t.upstream.name,
                "key": t.id,
                "breaker": t.breaker.state,
                "in_rotation": self.in_rotation(t.upstream.name),
                "headroom": None if t.limiter is None else round(t.limiter.headroom(), 3),
            }
            for t in self.targets
        ]
