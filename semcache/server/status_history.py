"""The last hour of the sidecar's own metrics, for the status page (``/dashboard``).

Every ``interval_s`` the history reads the sidecar's Prometheus registry (the same counters
``/metrics`` exports, so the page and Grafana never disagree) and keeps a snapshot of the
cumulative values it charts; a point on the page is the difference between two snapshots.
An hour of snapshots at the default 10 s is 361 small dicts.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

WINDOW_S = 3600.0
LATENCY = "semcache_request_duration_seconds"
SAVED_TOKENS = (
    "semcache_tokens_saved_total",
    "semcache_compression_tokens_removed_total",
    "semcache_batch_tokens_saved_total",
)
SAVED_USD = (
    "semcache_cost_saved_usd_total",
    "semcache_compression_saved_usd_total",
    "semcache_batch_saved_usd_total",
)
OUTCOMES = ("hit", "miss", "bypass", "deferred", "error")


@dataclass(frozen=True)
class Snapshot:
    """Cumulative values at one moment (and the gauges as they were)."""

    at: float
    requests: Mapping[str, float]  # by outcome
    latency_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count)
    tokens_saved: float
    usd_saved: float
    usd_spent: float
    queue_length: float


def _samples(registry: CollectorRegistry) -> Iterable[tuple[str, dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def read(registry: CollectorRegistry, at: float) -> Snapshot:
    requests = dict.fromkeys(OUTCOMES, 0.0)
    buckets: dict[float, float] = {}
    tokens = usd_saved = usd_spent = queue = 0.0
    for name, labels, value in _samples(registry):
        if name == "semcache_requests_total":
            outcome = labels.get("outcome", "")
            requests[outcome] = requests.get(outcome, 0.0) + value
        elif name == LATENCY + "_bucket":
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
        elif name in SAVED_TOKENS:
            tokens += value
        elif name in SAVED_USD:
            usd_saved += value
        elif name == "semcache_upstream_cost_usd_total":
            usd_spent += value
        elif name == "semcache_queue_length":
            queue += value
    return Snapshot(
        at=at,
        requests=requests,
        latency_buckets=tuple(sorted(buckets.items())),
        tokens_saved=tokens,
        usd_saved=usd_saved,
        usd_spent=usd_spent,
        queue_length=queue,
    )


def quantile(q: float, before: Snapshot, after: Snapshot) -> float | None:
    """The ``q`` quantile of the request durations between two snapshots, interpolated within
    its bucket as Prometheus's ``histogram_quantile`` does (``None``: no request)."""
    earlier = dict(before.latency_buckets)
    counts = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after.latency_buckets]
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in counts:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is what is known
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _between(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """What happened between two snapshots, as the page charts it."""
    requests = {o: after.requests.get(o, 0.0) - before.requests.get(o, 0.0) for o in OUTCOMES}
    looked_up = requests["hit"] + requests["miss"]
    p50, p95 = quantile(0.5, before, after), quantile(0.95, before, after)
    return {
        "t": after.at,
        "seconds": after.at - before.at,
        "requests": {o: round(n) for o, n in requests.items()},
        "hit_rate": requests["hit"] / looked_up if looked_up else None,
        "latency_p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "latency_p95_ms": None if p95 is None else round(p95 * 1000, 2),
        "tokens_saved": round(after.tokens_saved - before.tokens_saved),
        "usd_saved": round(after.usd_saved - before.usd_saved, 6),
        "usd_spent": round(after.usd_spent - before.usd_spent, 6),
        "queue_length": after.queue_length,
    }


@dataclass
class StatusHistory:
    registry: CollectorRegistry
    interval_s: float = 10.0
    clock: Callable[[], float] = time.time
    _snapshots: deque[Snapshot] = field(init=False)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._snapshots = deque(maxlen=math.ceil(WINDOW_S / self.interval_s) + 1)
        self.sample()

    def sample(self) -> None:
        self._snapshots.append(read(self.registry, self.clock()))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        """The points of the last hour, and the hour's totals up to now."""
        snapshots = list(self._snapshots)
        now = read(self.registry, self.clock())
        points = [_between(a, b) for a, b in itertools.pairwise(snapshots)]
        return {
            "interval_s": self.interval_s,
            "points": points,
            "hour": _between(snapshots[0], now),
        }
