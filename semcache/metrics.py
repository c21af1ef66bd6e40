"""Prometheus metrics of the sidecar, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "semcache_requests",
            "Requests by endpoint and outcome (hit, miss, bypass, error)",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "semcache_request_duration_seconds",
            "Time to the end of the response, by endpoint and outcome",
            ["endpoint", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "semcache_upstream_requests",
            "Calls to the upstream by HTTP status ('error' when none came)",
            ["status"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "semcache_upstream_duration_seconds",
            "Time until the upstream's response headers",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_saved = Counter(
            "semcache_tokens_saved",
            "Tokens answered from the cache instead of the upstream",
            ["kind"],
            registry=self.registry,
        )
        self.cost_saved = Counter(
            "semcache_cost_saved_usd",
            "Upstream spend avoided by cache hits, by the price table",
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "semcache_cache_errors",
            "Cache faults that were logged and failed open, by stage",
            ["stage"],
            registry=self.registry,
        )
        self.coalesced = Counter(
            "semcache_coalesced_requests",
            "Requests answered by waiting for an identical in-flight miss",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "semcache_lookup_batch_size",
            "Lookups per embedding batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.entries = Gauge(
            "semcache_cache_entries", "Entries in the cache", registry=self.registry
        )

    def track_entries(self, count: Callable[[], int]) -> None:
        self.entries.set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
