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
            "Requests by endpoint and outcome (hit, miss, bypass, deferred, error)",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.responses = Counter(
            "semcache_responses",
            "Responses to /v1/ requests by status class (2xx, 3xx, 4xx, 5xx; 429 on its own: "
            "limits, queue and budgets)",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "semcache_request_duration_seconds",
            "Time to the end of the response, by endpoint and outcome",
            ["endpoint", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "semcache_stage_duration_seconds",
            "Time a request spent in each stage of the pipeline (parse, look_up, send, ...); "
            "send and relay include the upstream's own time",
            ["stage"],
            buckets=(0.0001, 0.00025, 0.0005, *_LATENCY_BUCKETS),
            registry=self.registry,
        )
        self.overhead = Histogram(
            "semcache_overhead_seconds",
            "Time a request spent in the sidecar before it was sent upstream (parsing, lookup, "
            "admission, compression, coalescing; the wait for a key is not included)",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
                     0.5, 1, 2.5),
            registry=self.registry,
        )  # fmt: skip
        self.time_to_first_token = Histogram(
            "semcache_time_to_first_token_seconds",
            "Streamed requests: time until the first event of the answer reached the client, "
            "by endpoint and outcome (hit: replayed from the cache, miss: relayed)",
            ["endpoint", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_busy = Counter(
            "semcache_model_busy_skips",
            "Misses sent upstream without the semantic tier: the model's backlog was long and "
            "recent lookups rarely hit",
            registry=self.registry,
        )
        self.after_response = Gauge(
            "semcache_after_response_tasks",
            "Answers being stored after their response was released",
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "semcache_upstream_requests",
            "Calls to the upstreams by upstream, key and HTTP status ('error' when none came)",
            ["upstream", "key", "status"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "semcache_upstream_duration_seconds",
            "Time until an upstream's response headers",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_retries = Counter(
            "semcache_upstream_retries",
            "Attempts retried, by what went wrong (status or error type)",
            ["reason"],
            registry=self.registry,
        )
        self.upstream_tokens = Counter(
            "semcache_upstream_tokens",
            "Tokens the upstreams' usage reported, by upstream, key and kind (prompt, "
            "completion, and cached_prompt: the part of prompt read from the provider's cache)",
            ["upstream", "key", "kind"],
            registry=self.registry,
        )
        self.upstream_cost = Counter(
            "semcache_upstream_cost_usd",
            "Spend on the upstreams by the price table, by upstream and model",
            ["upstream", "model"],
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "semcache_upstream_breaker_open",
            "1 while an upstream's circuit breaker is open or half-open",
            ["upstream"],
            registry=self.registry,
        )
        self.key_headroom = Gauge(
            "semcache_upstream_key_headroom",
            "Share of a pool key's rate limits free now (the fuller of its RPM and TPM "
            "buckets decides), by upstream and key",
            ["upstream", "key"],
            registry=self.registry,
        )
        self.key_limit = Gauge(
            "semcache_upstream_key_limit",
            "A pool key's configured limit, by upstream, key and unit (rpm, tpm)",
            ["upstream", "key", "unit"],
            registry=self.registry,
        )
        self.upstream_up = Gauge(
            "semcache_upstream_up",
            "1 while an upstream is in rotation (its health checks answer), 0 while out",
            ["upstream"],
            registry=self.registry,
        )
        self.health_checks = Counter(
            "semcache_upstream_health_checks",
            "Health checks of the upstreams, by outcome (up: answered, down: failed)",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.queue_length = Gauge(
            "semcache_queue_length",
            "Requests waiting for an upstream key",
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "semcache_queue_wait_seconds",
            "Time requests waited for an upstream key",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_rejections = Counter(
            "semcache_queue_rejections",
            "Requests refused with 429 because the queue was full or the wait too long",
            ["reason"],
            registry=self.registry,
        )
        self.budget_spend = Gauge(
            "semcache_budget_spend_usd",
            "Spend of the current day, week and month, overall (scope global) and per business "
            "line (scope line:<name>)",
            ["scope", "period"],
            registry=self.registry,
        )
        self.budget_cap = Gauge(
            "semcache_budget_cap_usd",
            "The spend caps, overall and per business line, by period (absent: no cap)",
            ["scope", "period"],
            registry=self.registry,
        )
        self.budget_warnings = Counter(
            "semcache_budget_warnings",
            "Budget thresholds crossed (0.5, 0.8, 0.9, 1.0 of a cap), by kind of scope "
            "(global, line, tenant) and period",
            ["scope", "period", "threshold"],
            registry=self.registry,
        )
        self.budget_webhook = Counter(
            "semcache_budget_webhook_deliveries",
            "Budget warnings posted to budgets.warn_webhook, by outcome (delivered, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.budget_actions = Counter(
            "semcache_budget_actions",
            "Requests refused or downgraded because a spend cap was reached",
            ["action"],
            registry=self.registry,
        )
        self.tokens_saved = Counter(
            "semcache_tokens_saved",
            "Tokens answered from the cache instead of the upstream, by tier (exact, semantic, "
            "coalesced: an identical request's answer in flight) and kind (prompt, completion)",
            ["tier", "kind"],
            registry=self.registry,
        )
        self.cost_saved = Counter(
            "semcache_cost_saved_usd",
            "Upstream spend avoided by cache hits, by the price table, by tier",
            ["tier"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "semcache_lookup_decisions",
            "Lookups by how they ended: exact, semantic (hits), degraded (a hit at the lower "
            "threshold under backlog), or why they missed (below_threshold, "
            "below_min_confidence, a guard's *_mismatch, beyond_error_bound, ...)",
            ["reason"],
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
        self.lookup_batch_size = Histogram(
            "semcache_lookup_batch_size",
            "Lookups per embedding batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.error_bound_labels = Counter(
            "semcache_error_bound_labels",
            "Candidates labelled right or wrong for max_error_rate, by source (miss: the "
            "upstream's answer to a miss compared with its candidate's; shadow: a checked hit)",
            ["source"],
            registry=self.registry,
        )
        self.shadow_checks = Counter(
            "semcache_shadow_checks",
            "Hits also answered upstream and compared, by verdict (agree, disagree, failed)",
            ["verdict"],
            registry=self.registry,
        )
        self.shadow_false_hit_rate = Gauge(
            "semcache_shadow_false_hit_rate",
            "Share of the last shadow checks whose answers disagreed (estimated false-hit rate)",
            registry=self.registry,
        )
        self.compression_requests = Counter(
            "semcache_compression_requests",
            "Chat requests sent upstream with compression on, by mode asked and outcome "
            "(compressed, unchanged: too short or nothing gained, fallback: summary failed)",
            ["mode", "outcome"],
            registry=self.registry,
        )
        self.compression_tokens_removed = Counter(
            "semcache_compression_tokens_removed",
            "Prompt tokens compression kept from the upstream, by mode",
            ["mode"],
            registry=self.registry,
        )
        self.compression_latency = Histogram(
            "semcache_compression_duration_seconds",
            "Time to compress a request's history (summary calls included), by mode",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compression_saved = Counter(
            "semcache_compression_saved_usd",
            "Upstream spend avoided by compression, by the price table, after the provider's "
            "cached-token discount",
            ["mode"],
            registry=self.registry,
        )
        self.batch_calls = Counter(
            "semcache_batch_calls",
            "Merged upstream calls (several requests in one), by outcome (answered: at least "
            "one item answered, failed: every item sent again alone)",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_items = Counter(
            "semcache_batch_items",
            "Requests that waited in a batching window, by outcome (merged: answered by a "
            "merged call, fallback: sent again alone, alone: nothing to merge with)",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_fallbacks = Counter(
            "semcache_batch_fallbacks",
            "Items of merged calls sent again alone, by cause",
            ["cause"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "semcache_batch_size",
            "Requests per merged upstream call",
            buckets=(2, 3, 4, 5, 6, 8, 12, 16, 32),
            registry=self.registry,
        )
        self.batch_wait = Histogram(
            "semcache_batch_wait_seconds",
            "Time a request waited in its batching window",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens_saved = Counter(
            "semcache_batch_tokens_saved",
            "Prompt tokens merged calls did not send (the shared prefix sent once), net of the "
            "instructions and of items sent again",
            registry=self.registry,
        )
        self.batch_saved = Counter(
            "semcache_batch_saved_usd",
            "Upstream spend avoided by merged calls, by the price table",
            registry=self.registry,
        )
        self.deferred_requests = Counter(
            "semcache_deferred_requests",
            "Requests marked X-Semcache-Priority: batch, by outcome (queued, then completed, "
            "failed or expired)",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_jobs = Counter(
            "semcache_batch_jobs",
            "Provider batch jobs, by outcome (submitted, then completed, failed, expired or "
            "cancelled)",
            ["outcome"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "semcache_redis_errors",
            "Calls to the shared Redis that failed or timed out (each answered from the local "
            "stand-in instead)",
            registry=self.registry,
        )
        self.entries = Gauge(
            "semcache_cache_entries", "Entries in the cache", registry=self.registry
        )

    def hold_false_hits_to(self, max_error_rate: float) -> None:
        """Export the error bound (only when one is set: alerts compare the shadow checks'
        false-hit rate with it, or with a default when it is absent)."""
        Gauge(
            "semcache_false_hit_bound",
            "The share of wrong hits the cache is held to (max_error_rate)",
            registry=self.registry,
        ).set(max_error_rate)

    def track_entries(self, count: Callable[[], int]) -> None:
        self.entries.set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
