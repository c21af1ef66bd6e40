"""The Grafana dashboard of the sidecar, as code (grafana-foundation-sdk).

    python deploy/grafana/dashboard.py > deploy/grafana/semcache.json

The JSON beside this file is what Grafana loads (deploy/compose.yml provisions it); a test
keeps it equal to what this script prints, checks that every metric a panel queries is one
the sidecar exports, and decodes it with the SDK's models of Grafana's schema.

Every query is filtered by the ``instance`` variable (one sidecar, several, or all) and reads
only metrics whose labels have bounded values: endpoint, outcome, reason, tier, upstream, key
id, period, business line. No tenant, prompt or request id is ever a label.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

UID = "semcache-sidecar"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
INSTANCE = 'instance=~"$instance"'
RATE = "$__rate_interval"
FAILED = 'code=~"5xx|429"'  # responses that count against the success rate
TPM = 'unit="tpm"'
BILLED = 'kind=~"prompt|completion"'  # cached_prompt is a part of prompt


def m(metric: str, matchers: str = "") -> str:
    """A series selector filtered by the dashboard's instance variable."""
    return f"{metric}{{{INSTANCE}{',' + matchers if matchers else ''}}}"


def rate(metric: str, matchers: str = "", by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({m(metric, matchers)}[{RATE}]))"


def quantile(q: float, histogram: str, matchers: str = "", by: str = "") -> str:
    labels = ", ".join(["le", *([by] if by else [])])
    return (
        f"histogram_quantile({q}, sum by ({labels}) "
        f"(rate({m(histogram + '_bucket', matchers)}[{RATE}])))"
    )


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Chart:
    """One panel: a time series (default) or a single stat."""

    title: str
    queries: Sequence[Query]
    unit: str = "short"
    description: str = ""
    width: int = 8
    kind: str = "timeseries"  # or "stat"
    stacked: bool = False


def quantiles(histogram: str, name: str, matchers: str = "") -> list[Query]:
    return [
        Query(quantile(q, histogram, matchers), f"{name} p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]


def hit_rate(window: str) -> str:
    answered = m("semcache_requests_total", 'outcome=~"hit|miss"')
    hits = m("semcache_requests_total", 'outcome="hit"')
    return f"sum(rate({hits}[{window}])) / sum(rate({answered}[{window}]))"


ROWS: list[tuple[str, list[Chart]]] = [
    (
        "Traffic and outcomes",
        [
            Chart(
                "Success rate (5m)",
                [
                    Query(
                        f"1 - sum(rate({m('semcache_responses_total', FAILED)}[5m]))"
                        f" / sum(rate({m('semcache_responses_total')}[5m]))",
                        "success",
                    )
                ],
                unit="percentunit",
                kind="stat",
                width=6,
                description="Share of /v1/ responses that were neither 5xx nor 429",
            ),
            Chart(
                "Hit rate (5m)",
                [Query(hit_rate("5m"), "hit rate")],
                unit="percentunit",
                kind="stat",
                width=6,
                description="Hits among the requests that looked the cache up",
            ),
            Chart(
                "Dollars saved (range)",
                [
                    Query(
                        f"sum(increase({m('semcache_cost_saved_usd_total')}[$__range]))"
                        f" + sum(increase({m('semcache_compression_saved_usd_total')}[$__range]))"
                        f" + sum(increase({m('semcache_batch_saved_usd_total')}[$__range]))",
                        "saved",
                    )
                ],
                unit="currencyUSD",
                kind="stat",
                width=6,
            ),
            Chart(
                "Upstream spend (range)",
                [
                    Query(
                        f"sum(increase({m('semcache_upstream_cost_usd_total')}[$__range]))",
                        "spent",
                    )
                ],
                unit="currencyUSD",
                kind="stat",
                width=6,
            ),
            Chart(
                "Requests by outcome",
                [Query(rate("semcache_requests_total", by="outcome"), "{{outcome}}")],
                unit="reqps",
                stacked=True,
            ),
            Chart(
                "Requests by endpoint",
                [Query(rate("semcache_requests_total", by="endpoint"), "{{endpoint}}")],
                unit="reqps",
                stacked=True,
            ),
            Chart(
                "Responses by status class",
                [Query(rate("semcache_responses_total", by="code"), "{{code}}")],
                unit="reqps",
                stacked=True,
            ),
        ],
    ),
    (
        "Latency",
        [
            Chart(
                "Request duration",
                quantiles("semcache_request_duration_seconds", "total"),
                unit="s",
                description="Until the end of the response, hits and misses together",
            ),
            Chart(
                "Request duration p95 by outcome",
                [
                    Query(
                        quantile(0.95, "semcache_request_duration_seconds", by="outcome"),
                        "{{outcome}}",
                    )
                ],
                unit="s",
            ),
            Chart(
                "Upstream duration",
                quantiles("semcache_upstream_duration_seconds", "upstream"),
                unit="s",
                description="Until the upstream's response headers",
            ),
            Chart(
                "Sidecar overhead before the upstream",
                quantiles("semcache_overhead_seconds", "overhead"),
                unit="s",
                description="Parsing, lookup, admission, compression: what a miss adds",
            ),
            Chart(
                "Time to first token (streams)",
                [
                    Query(
                        quantile(q, "semcache_time_to_first_token_seconds", by="outcome"),
                        f"{{{{outcome}}}} p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                unit="s",
            ),
            Chart(
                "Pipeline stage p95",
                [
                    Query(
                        quantile(0.95, "semcache_stage_duration_seconds", by="stage"),
                        "{{stage}}",
                    )
                ],
                unit="s",
            ),
        ],
    ),
    (
        "Cache",
        [
            Chart("Hit rate", [Query(hit_rate(RATE), "hit rate")], unit="percentunit"),
            Chart(
                "Lookups by decision",
                [Query(rate("semcache_lookup_decisions_total", by="reason"), "{{reason}}")],
                unit="ops",
                stacked=True,
                description="Hits (exact, semantic, degraded) and why the others missed: "
                "threshold, verifier, guards, error bound",
            ),
            Chart(
                "Entries",
                [Query(f"sum({m('semcache_cache_entries')})", "entries")],
            ),
            Chart(
                "Tokens saved by source",
                [
                    Query(rate("semcache_tokens_saved_total", by="tier"), "{{tier}}"),
                    Query(rate("semcache_compression_tokens_removed_total"), "compression"),
                    Query(rate("semcache_batch_tokens_saved_total"), "batching"),
                ],
                unit="short",
                stacked=True,
            ),
            Chart(
                "Dollars saved by source (per hour)",
                [
                    Query(rate("semcache_cost_saved_usd_total", by="tier") + " * 3600", "{{tier}}"),
                    Query(rate("semcache_compression_saved_usd_total") + " * 3600", "compression"),
                    Query(rate("semcache_batch_saved_usd_total") + " * 3600", "batching"),
                ],
                unit="currencyUSD",
                stacked=True,
            ),
            Chart(
                "Shadow false-hit rate",
                [Query(f"max({m('semcache_shadow_false_hit_rate')})", "estimated false hits")],
                unit="percentunit",
                description="Hits also answered upstream whose answers disagreed",
            ),
        ],
    ),
    (
        "Upstream keys",
        [
            Chart(
                "Key headroom",
                [
                    Query(
                        f"min by (upstream, key) ({m('semcache_upstream_key_headroom')})",
                        "{{upstream}} {{key}}",
                    )
                ],
                unit="percentunit",
            ),
            Chart(
                "Tokens per minute against each key's TPM",
                [
                    Query(
                        rate("semcache_upstream_tokens_total", BILLED, by="upstream, key")
                        + " * 60",
                        "{{upstream}} {{key}} used",
                    ),
                    Query(
                        f"max by (upstream, key) ({m('semcache_upstream_key_limit', TPM)})",
                        "{{upstream}} {{key}} limit",
                    ),
                ],
            ),
            Chart(
                "429s from the upstreams",
                [
                    Query(
                        rate("semcache_upstream_requests_total", 'status="429"', by="upstream"),
                        "{{upstream}}",
                    )
                ],
                unit="reqps",
            ),
            Chart(
                "Upstream requests by status",
                [
                    Query(
                        rate("semcache_upstream_requests_total", by="upstream, status"),
                        "{{upstream}} {{status}}",
                    )
                ],
                unit="reqps",
                stacked=True,
            ),
            Chart(
                "Breakers open, upstreams out of rotation",
                [
                    Query(
                        f"max by (upstream) ({m('semcache_upstream_breaker_open')})",
                        "{{upstream}} breaker open",
                    ),
                    Query(
                        f"1 - min by (upstream) ({m('semcache_upstream_up')})",
                        "{{upstream}} out of rotation",
                    ),
                ],
            ),
            Chart(
                "Retries by reason",
                [Query(rate("semcache_upstream_retries_total", by="reason"), "{{reason}}")],
                unit="ops",
                stacked=True,
            ),
        ],
    ),
    (
        "Queue",
        [
            Chart("Queue length", [Query(f"sum({m('semcache_queue_length')})", "waiting")]),
            Chart(
                "Queue wait",
                quantiles("semcache_queue_wait_seconds", "wait")[:2],
                unit="s",
            ),
            Chart(
                "Queue rejections",
                [Query(rate("semcache_queue_rejections_total", by="reason"), "{{reason}}")],
                unit="reqps",
            ),
        ],
    ),
    (
        "Budgets",
        [
            Chart(
                "Spend against caps",
                [
                    Query(
                        f"max by (scope, period) ({m('semcache_budget_spend_usd')})",
                        "{{scope}} {{period}} spent",
                    ),
                    Query(
                        f"max by (scope, period) ({m('semcache_budget_cap_usd')})",
                        "{{scope}} {{period}} cap",
                    ),
                ],
                unit="currencyUSD",
                width=12,
            ),
            Chart(
                "Spend per hour by model",
                [
                    Query(
                        rate("semcache_upstream_cost_usd_total", by="model") + " * 3600",
                        "{{model}}",
                    )
                ],
                unit="currencyUSD",
                width=6,
            ),
            Chart(
                "Budget warnings and actions",
                [
                    Query(
                        f"sum by (scope, threshold) "
                        f"(increase({m('semcache_budget_warnings_total')}[$__range]))",
                        "{{scope}} crossed {{threshold}}",
                    ),
                    Query(
                        f"sum by (action) (increase({m('semcache_budget_actions_total')}"
                        f"[$__range]))",
                        "{{action}}",
                    ),
                ],
                width=6,
            ),
        ],
    ),
    (
        "Errors",
        [
            Chart(
                "Failed requests",
                [
                    Query(rate("semcache_requests_total", 'outcome="error"'), "pipeline errors"),
                    Query(rate("semcache_responses_total", 'code="5xx"'), "5xx responses"),
                    Query(
                        rate("semcache_upstream_requests_total", 'status="error"'),
                        "upstream unreachable",
                    ),
                ],
                unit="reqps",
            ),
            Chart(
                "Cache and Redis faults",
                [
                    Query(rate("semcache_cache_errors_total", by="stage"), "cache {{stage}}"),
                    Query(rate("semcache_redis_errors_total"), "redis"),
                ],
                unit="ops",
                description="Each failed open: the request was answered all the same",
            ),
            Chart(
                "Batching fallbacks",
                [Query(rate("semcache_batch_fallbacks_total", by="cause"), "{{cause}}")],
                unit="ops",
            ),
        ],
    ),
]


def panel(chart: Chart, position: GridPos, panel_id: int) -> timeseries.Panel | stat.Panel:
    built: timeseries.Panel | stat.Panel = (
        stat.Panel() if chart.kind == "stat" else timeseries.Panel()
    )
    built.id(panel_id).title(chart.title).datasource(DATASOURCE).unit(chart.unit).grid_pos(position)
    if chart.description:
        built.description(chart.description)
    for ref, query in zip("ABCDEFGH", chart.queries, strict=False):
        built.with_target(
            prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref)
        )
    if isinstance(built, timeseries.Panel):
        built.legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        if chart.stacked:
            built.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(30)
    else:
        built.reduce_options(ReduceDataOptions().calcs(["lastNotNull"])).graph_mode(
            BigValueGraphMode.AREA
        )
    return built


def build() -> dash.Dashboard:
    board = (
        dash.Dashboard("semcache sidecar")
        .uid(UID)
        .tags(["semcache", "llm", "cache"])
        .refresh("30s")
        .time("now-6h", "now")
        .description("Traffic, latency, cache, upstream keys, queue, budgets and errors")
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dash.QueryVariable("instance")
            .label("Sidecar")
            .datasource(DATASOURCE)
            .query("label_values(semcache_requests_total, instance)")
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    y = 0
    ids = iter(range(1, 1000))
    for title, charts in ROWS:
        board.with_row(dash.Row(title).id(next(ids)).grid_pos(GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        x = 0
        for chart in charts:
            if x + chart.width > 24:
                x, y = 0, y + 8
            board.with_panel(panel(chart, GridPos(h=8, w=chart.width, x=x, y=y), next(ids)))
            x += chart.width
        y += 8
    return board


def render() -> str:
    return json.dumps(json.loads(JSONEncoder(sort_keys=True).encode(build().build())), indent=2)


def queries(document: dict[str, object]) -> Iterable[str]:
    """Every PromQL expression of a dashboard's JSON."""
    panels = document.get("panels")
    assert isinstance(panels, list)
    for each in panels:
        for target in each.get("targets") or []:
            yield target["expr"]


if __name__ == "__main__":
    sys.stdout.write(render() + "\n")
