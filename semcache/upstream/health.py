"""Health checks: every upstream probed on an interval, so that one that stopped answering is
taken out of rotation before a user's request meets it, and brought back when it answers.

A probe is a cheap call that every kind of upstream serves: ``GET /v1/models`` (an Azure
upstream: ``GET /openai/models?api-version=...``), with the upstream's first pool key (or no
key at all for a passthrough upstream). An upstream is *up* when it answers with any status
below 500: a 401 or a 404 is an upstream that answers (the status is shown), a 429 one that is
busy. A connection error, a timeout or a 5xx is a failed probe; ``failures`` in a row (probed
again ``retry_s`` after a failure, not a whole interval later) take the upstream out of
rotation. While it is out it is probed every ``retry_s``, and the first answer brings it back.

Out of rotation means the router sends to the other upstreams that serve the request; when
every one that could is out, it sends anyway (a probe's verdict is not worth refusing a
request over, and the circuit breaker still stands between callers and a dead upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from semcache.errors import UpstreamError
from semcache.upstream.router import Router, Target

logger = logging.getLogger("semcache.upstream")

PROBE_PATH = "/v1/models"


@dataclass
class Health:
    """What the last probes of one upstream found."""

    upstream: str
    up: bool = True  # in rotation (an upstream is in rotation until a probe says otherwise)
    checked: bool = False
    failures: int = 0  # failed probes in a row
    last_checked_at: float | None = None  # wall clock
    last_status: int | None = None
    last_error: str | None = None
    last_latency_s: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "up": self.up,
            "checked": self.checked,
            "failures_in_a_row": self.failures,
            "last_checked_at": self.last_checked_at,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_latency_s": self.last_latency_s,
        }


class HealthChecks:
    def __init__(
        self,
        router: Router,
        *,
        interval_s: float = 60.0,
        timeout_s: float = 10.0,
        failures: int = 2,
        retry_s: float = 5.0,
        on_probe: Callable[[str, str, float], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_probe(upstream, outcome, seconds)`` is told of every probe (``up`` or
        ``down``)."""
        self.router = router
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures_to_fail = failures
        self.retry_s = min(retry_s, interval_s)
        self._on_probe = on_probe
        self._wall_clock = wall_clock
        self.health = {spec.name: Health(spec.name) for spec in router.upstreams}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Probe every upstream now and then on its own schedule."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(name)) for name in self.health]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _watch(self, name: str) -> None:
        while True:
            try:
                await self.probe(name)
            except Exception:  # a probe must never stop the watch
                logger.exception("probing the upstream %s failed unexpectedly", name)
            health = self.health[name]
            await asyncio.sleep(
                self.retry_s if health.failures or not health.up else self.interval_s
            )

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(name) for name in self.health))

    async def probe(self, name: str) -> Health:
        """Probe one upstream once and update its rotation."""
        target = self._target(name)
        health = self.health[name]
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                async with target.client.request(
                    "GET",
                    PROBE_PATH,
                    headers=target.headers({}),
                    body=None,
                    url=target.url(PROBE_PATH, None, ""),
                ) as response:
                    status = response.status
                    await response.read()
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except UpstreamError as exc:
            error = str(exc)
        elapsed = time.monotonic() - started
        answered = status is not None and status < 500
        health.checked = True
        health.last_checked_at = self._wall_clock()
        health.last_status = status
        health.last_error = error if error is not None else (None if answered else f"{status}")
        health.last_latency_s = round(elapsed, 4)
        if answered:
            if not health.up:
                logger.warning("upstream %s answers its health check again: back in rotation", name)
            health.failures = 0
            health.up = True
        else:
            health.failures += 1
            if health.up and health.failures >= self.failures_to_fail:
                logger.warning(
                    "upstream %s failed %d health checks in a row (%s): out of rotation",
                    name,
                    health.failures,
                    health.last_error,
                )
                health.up = False
        self.router.set_in_rotation(name, health.up)
        if self._on_probe is not None:
            self._on_probe(name, "up" if answered else "down", elapsed)
        return health

    def _target(self, name: str) -> Target:
        """The upstream's first pool key (or its passthrough target)."""
        return next(t for t in self.router.targets if t.upstream.name == name)

    def describe(self) -> list[dict[str, Any]]:
        return [health.describe() for health in self.health.values()]
