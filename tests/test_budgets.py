"""Spend budgets: weekly caps beside daily and monthly ones, business lines (named groups of
clients sharing caps), and warnings posted to a webhook as well as logged and counted."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from semcache.budgets import BudgetWarning, SpendLedger, parse_budgets
from semcache.clients import parse_clients
from semcache.errors import ConfigError
from semcache.pricing import Price, PriceTable
from semcache.server.budget_webhook import BudgetWebhook
from semcache.settings import ServerConfig
from semcache.upstream.specs import parse_upstreams
from tests.conftest import WordHashEmbedder
from tests.fake_openai import FakeOpenAI
from tests.sidecar import serving, start_sidecar
from tests.test_upstreams import chat


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_a_weekly_cap_resets_on_monday_and_not_before(tmp_path: Path) -> None:
    now = [at("2026-11-29 23:50")]  # a Sunday
    config = parse_budgets({"weekly_usd": 1.0, "monthly_usd": 10.0, "tenant_weekly_usd": 0.5})
    ledger = SpendLedger(tmp_path, config, clock=lambda: now[0])
    warnings = ledger.record("key-a", 0.6)
    assert {(w.scope, w.period, w.fraction) for w in warnings} >= {
        ("global", "week", 0.5),
        ("key-a", "week", 1.0),
    }
    refused = ledger.admit("key-a", "gpt-4o")
    assert refused.refused and refused.exceeded is not None
    assert "weekly budget" in refused.exceeded.message()
    assert refused.exceeded.resets_at == at("2026-11-30 00:00")
    now[0] = at("2026-11-30 00:05")  # Monday: a new week, the same month
    assert ledger.spent("global", "week") == 0
    assert ledger.spent("global", "month") == pytest.approx(0.6)
    assert not ledger.admit("key-a", "gpt-4o").refused
    now[0] = at("2026-12-06 23:59")  # still the week that began on Monday
    ledger.record("key-a", 0.1)
    assert ledger.spent("global", "week") == pytest.approx(0.1)
    ledger.close()


def test_business_lines_are_checked_when_read() -> None:
    def parse(lines: Any, **extra: Any) -> None:
        parse_budgets({"lines": lines, **extra})

    with pytest.raises(ConfigError, match="two business lines"):
        parse({"a": {"clients": ["x"]}, "b": {"clients": ["y", "x"]}})
    with pytest.raises(ConfigError, match="non-empty list"):
        parse({"a": {"clients": []}})
    with pytest.raises(ConfigError, match=r"budgets\.lines\.a may hold"):
        parse({"a": {"clients": ["x"], "hourly_usd": 1}})
    with pytest.raises(ConfigError, match="non-negative amount"):
        parse({"a": {"clients": ["x"], "weekly_usd": -1}})
    with pytest.raises(ConfigError, match="http"):
        parse({}, warn_webhook="ftp://example.invalid/hook")
    with pytest.raises(ConfigError, match="BUDGET_HOOK is not set"):
        parse({}, warn_webhook="env:BUDGET_HOOK")
    hooked = parse_budgets(
        {"warn_webhook": "env:BUDGET_HOOK"}, {"BUDGET_HOOK": "https://hooks.test/x"}
    )
    assert hooked.warn_webhook == "https://hooks.test/x"
    assert "hooks.test" not in repr(hooked)  # a webhook URL often carries a token
    # A line groups named clients: a name that is not one is a typo.
    upstreams = parse_upstreams([{"name": "u", "base_url": "http://127.0.0.1:9/v1",
                                  "api_keys": ["sk"]}], {})  # fmt: skip
    clients = parse_clients([{"name": "checkout", "api_keys": ["sk-c"]}], {})
    budgets = parse_budgets({"lines": {"payments": {"clients": ["checkout", "refunds"]}}})
    with pytest.raises(ConfigError, match="refunds not among the"):
        ServerConfig(upstreams=upstreams, clients=clients, budgets=budgets)


class Hook:
    """A webhook receiver on 127.0.0.1 that records what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response(status=self.status)

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                await asyncio.sleep(0.01)


async def hook_url(hook: Hook) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    async with serving(app) as url:
        yield url + "/hook"


async def test_a_business_line_shares_its_cap_and_its_warnings_reach_the_webhook(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    hook = Hook()
    async for url in hook_url(hook):
        clients = parse_clients(
            [
                {"name": "checkout", "api_keys": ["sk-checkout"]},
                {"name": "refunds", "api_keys": ["sk-refunds"]},
                {"name": "search", "api_keys": ["sk-search"]},
            ],
            {},
        )
        # Each answer costs about $0.02 at $1 per 1K tokens: one spends the line's day.
        budgets = parse_budgets(
            {
                "lines": {"payments": {"clients": ["checkout", "refunds"], "daily_usd": 0.015}},
                "weekly_usd": 100.0,
                "warn_webhook": url,
            }
        )
        settings = {
            "clients": clients,
            "budgets": budgets,
            "prices": PriceTable({"gpt-4o-mini": Price(1.0, 1.0)}),
            "upstreams": parse_upstreams(
                [{"name": "main", "base_url": upstream.url, "api_keys": ["sk-pool"]}], {}
            ),
        }
        async with start_sidecar(tmp_path, WordHashEmbedder(), upstream, **settings) as sidecar:
            checkout = {"Authorization": "Bearer sk-checkout"}
            status, _, _ = await chat(sidecar, "What is the capital of France?", checkout)
            assert status == 200
            refunds = {"Authorization": "Bearer sk-refunds"}
            status, body, _ = await chat(sidecar, "Where is my refund?", refunds)
            assert status == 429 and body["error"]["code"] == "budget_exceeded"
            assert "business line 'payments'" in body["error"]["message"]
            search = {"Authorization": "Bearer sk-search"}
            assert (await chat(sidecar, "Find red shoes", search))[0] == 200  # not in the line
            # What the line spent, against its cap, for dashboards and alerts.
            line = {"scope": "line:payments", "period": "day"}
            spent = await sidecar.metric("semcache_budget_spend_usd", **line)
            assert spent is not None and spent > 0.015
            assert await sidecar.metric("semcache_budget_cap_usd", **line) == 0.015
            overall = {"scope": "global", "period": "week"}
            assert await sidecar.metric("semcache_budget_cap_usd", **overall) == 100.0
            crossed = {"scope": "line", "period": "day", "threshold": "0.8"}
            assert await sidecar.metric("semcache_budget_warnings_total", **crossed) == 1.0
            stats = await sidecar.get("/stats")
            assert stats["budgets"]["lines"]["payments"]["day"]["cap_usd"] == 0.015
            assert stats["budgets"]["week"]["spent_usd"] > spent
            await hook.wait_for(4)
            assert await sidecar.metric(
                "semcache_budget_webhook_deliveries_total", outcome="delivered"
            ) == len(hook.received)
    line_warnings = sorted(
        (w["fraction"], w["period"]) for w in hook.received if w["scope"] == "line"
    )
    assert line_warnings == [(0.5, "day"), (0.8, "day"), (0.9, "day"), (1.0, "day")]
    first = next(w for w in hook.received if w["scope"] == "line")
    assert first["name"] == "payments" and first["cap_usd"] == 0.015
    assert first["resets_at"].endswith("T00:00:00Z")
    assert "business line payments has spent" in first["text"]
    assert all(w["event"] == "budget_warning" for w in hook.received)
    # The tenants' own keys never travel in a warning; a tenant warning names its tenant.
    assert "sk-checkout" not in str(hook.received)


async def test_a_webhook_that_fails_is_tried_three_times_then_counted() -> None:
    hook = Hook(status=503)
    outcomes: list[str] = []
    async for url in hook_url(hook):
        webhook = BudgetWebhook(url, backoff_s=0.01, on_delivery=outcomes.append)
        await webhook.start()
        webhook.send([BudgetWarning("global", "month", 0.9, 90.0, 100.0, at("2026-12-01"))])
        await webhook.close()
    assert len(hook.received) == 3 and outcomes == ["failed"]
    assert hook.received[0]["scope"] == "global" and hook.received[0]["name"] is None
