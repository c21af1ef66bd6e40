"""Upstream management end to end: key pools under limits, the queue, retries, failover, the
breaker and budgets, against fake upstreams that enforce limits and fail on cue (real HTTP on
127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from semcache.budgets import parse_budgets
from semcache.clients import parse_clients
from semcache.errors import ConfigError
from semcache.pricing import Price, PriceTable
from semcache.settings import ServerConfig
from semcache.tokens import count_messages, count_text
from semcache.upstream.specs import parse_upstreams
from tests.conftest import WordHashEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.sidecar import Sidecar, start_sidecar

FAST = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05}


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeOpenAI]]:
    started = [FakeOpenAI(), FakeOpenAI()]
    for fake in started:
        await fake.start()
    yield started
    for fake in started:
        await fake.stop()


def pool(fake: FakeOpenAI, name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": fake.url, "api_keys": ["sk-pool-0"], **extra}


async def chat(
    sidecar: Sidecar, text: str, headers: dict[str, str] | None = None, **extra: Any
) -> tuple[int, Any, dict[str, str]]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    return await sidecar.post("/v1/chat/completions", orjson.dumps(body), headers)


def sidecar_with(
    tmp_path: Path, upstream: FakeOpenAI, tables: list[dict[str, Any]], **settings: Any
) -> Any:
    specs = parse_upstreams(tables, {"POOL_KEY": "sk-from-env"})
    return start_sidecar(
        tmp_path, WordHashEmbedder(), upstream, upstreams=specs, **{**FAST, **settings}
    )


async def test_pool_keys_replace_the_callers_and_spread_by_headroom(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    fake = fakes[0]
    table = pool(fake, api_keys=["sk-pool-0", "env:POOL_KEY"], rpm=600, tpm=1_000_000)
    async with sidecar_with(tmp_path, fake, [table]) as sidecar:
        results = await asyncio.gather(*(chat(sidecar, f"question number {i}") for i in range(12)))
    assert [status for status, _, _ in results] == [200] * 12
    keys = [r.key for r in fake.calls()]
    assert set(keys) == {"sk-pool-0", "sk-from-env"}
    assert abs(keys.count("sk-pool-0") - keys.count("sk-from-env")) <= 2
    assert all("sk-raw" not in str(r.headers) for r in fake.calls())
    assert results[0][2]["X-Semcache-Upstream"] == "main"


async def test_no_request_is_lost_when_the_upstream_refuses_past_its_limit(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    """The pool believes its keys allow 600 RPM; the upstream allows 30 per key. The 429s teach
    the router (Retry-After), requests move to the other key or wait, and every one succeeds."""
    fake = fakes[0]
    fake.rpm_per_key = 30
    table = pool(fake, api_keys=["sk-a", "sk-b"], rpm=600)
    async with sidecar_with(tmp_path, fake, [table], max_retries=8) as sidecar:
        # 30 + 30 go at once; the next ten wait for a refill (one per two seconds per key).
        results = await asyncio.gather(*(chat(sidecar, f"burst item {i}") for i in range(70)))
    assert [status for status, _, _ in results] == [200] * 70
    assert len(fake.calls()) == 70
    assert fake.refused, "the upstream's limit was reached"


async def test_priority_orders_the_queue(tmp_path: Path, fakes: list[FakeOpenAI]) -> None:
    fake = fakes[0]
    table = pool(fake, rpm=60)  # one request per second, paced at 1.5 per second
    async with sidecar_with(tmp_path, fake, [table]) as sidecar:
        first = asyncio.create_task(chat(sidecar, "the first, which takes the free slot"))
        await asyncio.sleep(0.05)
        waiting = []
        for i, priority in enumerate(("low", "normal", "high", "low", "high")):
            headers = {"X-Semcache-Priority": priority}
            waiting.append(asyncio.create_task(chat(sidecar, f"{priority} job {i}", headers)))
            await asyncio.sleep(0.02)
        await asyncio.gather(first, *waiting)
    order = [r.body["messages"][0]["content"] for r in fake.calls()][1:]
    assert order == ["high job 2", "high job 4", "normal job 1", "low job 0", "low job 3"]


async def test_a_full_queue_or_a_long_wait_is_a_429_with_retry_after(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    fake = fakes[0]
    table = pool(fake, rpm=6)  # paced: one request per 6.7 s
    settings = {"queue_max_wait_s": 0.3, "queue_max_length": 1}
    async with sidecar_with(tmp_path, fake, [table], **settings) as sidecar:
        assert (await chat(sidecar, "goes at once"))[0] == 200
        waits, full = await asyncio.gather(
            chat(sidecar, "waits too long"), chat(sidecar, "finds the queue full")
        )
        statuses = sorted([waits[0], full[0]])
        assert statuses == [429, 429]
        codes = {waits[1]["error"]["code"], full[1]["error"]["code"]}
        assert codes == {"queue_timeout", "queue_full"}
        assert all(int(r[2]["Retry-After"]) >= 1 for r in (waits, full))
        async with aiohttp.ClientSession() as session:
            text = await (await session.get(sidecar.url + "/metrics")).text()
    assert 'semcache_queue_rejections_total{reason="timeout"} 1.0' in text
    assert 'semcache_queue_rejections_total{reason="full"} 1.0' in text
    assert len(fake.calls()) == 1


async def test_failover_by_priority_and_the_breaker(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    primary, backup = fakes
    primary.default = Behaviour(status=500)
    tables = [pool(primary, "primary", priority=0), pool(backup, "backup", priority=1)]
    settings = {"breaker_failures": 2, "breaker_reset_s": 0.5}
    async with sidecar_with(tmp_path, primary, tables, **settings) as sidecar:
        for i in range(4):
            status, _, headers = await chat(sidecar, f"failover question {i}")
            assert status == 200 and headers["X-Semcache-Upstream"] == "backup"
        # Two failures opened the primary's breaker: the last requests went straight to backup.
        assert len(primary.calls()) == 2
        assert len(backup.calls()) == 4
        await asyncio.sleep(0.6)  # half-open: one probe goes to the primary, now healthy
        primary.default = Behaviour()
        status, _, headers = await chat(sidecar, "after the reset")
        assert status == 200 and headers["X-Semcache-Upstream"] == "primary"
        status, _, headers = await chat(sidecar, "breaker closed again")
        assert headers["X-Semcache-Upstream"] == "primary"


async def test_a_streamed_answer_is_never_retried_once_it_started(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    primary, backup = fakes
    primary.script.append(Behaviour(cut_after_chunks=3))
    tables = [pool(primary, "primary"), pool(backup, "backup", priority=1)]
    async with (
        sidecar_with(tmp_path, primary, tables) as sidecar,
        aiohttp.ClientSession() as session,
        session.post(
            sidecar.url + "/v1/chat/completions",
            data=orjson.dumps(
                {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "tell me a long story"}],
                    "stream": True,
                }
            ),
            headers={"Authorization": "Bearer sk-raw"},
        ) as response,
    ):
        assert response.status == 200
        text = (await response.read()).decode()
    assert "stream_interrupted" in text
    assert len(primary.calls()) == 1 and backup.calls() == []


async def test_azure_deployments_and_api_version(tmp_path: Path, fakes: list[FakeOpenAI]) -> None:
    fake = fakes[0]
    table = {
        "name": "azure-east",
        "kind": "azure",
        "base_url": fake.url.removesuffix("/v1"),
        "api_keys": ["azure-secret"],
        "api_version": "2024-10-21",
        "deployments": {"gpt-4o-mini": "mini-prod"},
    }
    async with sidecar_with(tmp_path, fake, [table]) as sidecar:
        status, body, _ = await chat(sidecar, "hello azure")
        assert status == 200, body
        status, body, _ = await chat(sidecar, "hello again", model="gpt-4o")
        assert status == 400 and body["error"]["param"] == "model"
    received = fake.received[0]
    assert received.path == "/openai/deployments/mini-prod/chat/completions"
    assert received.headers["api-key"] == "azure-secret"
    assert "Authorization" not in received.headers


def budget_settings(**budgets: Any) -> dict[str, Any]:
    return {
        "budgets": parse_budgets(budgets),
        "prices": PriceTable({"gpt-4o-mini": Price(1.0, 1.0), "cheap": Price(0.001, 0.001)}),
    }


async def test_a_spent_budget_refuses_and_survives_a_restart(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    fake = fakes[0]
    # The fake's answers use 12 prompt tokens + a few: about $0.02 at $1 per 1K tokens.
    settings = budget_settings(daily_usd=0.015, warn_at=[0.5])
    async with start_sidecar(tmp_path, WordHashEmbedder(), fake, **settings) as sidecar:
        assert (await chat(sidecar, "first question"))[0] == 200
        status, body, headers = await chat(sidecar, "second question")
        assert status == 429 and body["error"]["type"] == "insufficient_quota"
        assert body["error"]["code"] == "budget_exceeded"
        assert "daily budget" in body["error"]["message"]
        assert int(headers["Retry-After"]) > 0
        async with aiohttp.ClientSession() as session:
            text = await (await session.get(sidecar.url + "/metrics")).text()
        warning = 'semcache_budget_warnings_total{period="day",scope="global",threshold="0.5"}'
        assert f"{warning} 1.0" in text
        assert 'threshold="1.0"} 1.0' in text
    async with start_sidecar(tmp_path, WordHashEmbedder(), fake, **settings) as sidecar:
        status, body, _ = await chat(sidecar, "third question, after a restart")
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        # Hits cost nothing and are still served.
        status, _, headers = await chat(sidecar, "first question")
        assert status == 200 and headers["X-Semcache"] == "hit"
    assert len(fake.calls()) == 1


async def test_a_spent_tenant_budget_downgrades_to_the_cheaper_model(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    fake = fakes[0]
    settings = budget_settings(
        tenant_daily_usd=0.015, on_exceeded="downgrade", downgrade_model="cheap"
    )
    async with start_sidecar(tmp_path, WordHashEmbedder(), fake, **settings) as sidecar:
        assert (await chat(sidecar, "first question"))[0] == 200
        status, _, headers = await chat(sidecar, "second question")
        assert status == 200 and headers["X-Semcache-Budget"] == "downgraded to cheap"
        other = await chat(sidecar, "another tenant", {"Authorization": "Bearer sk-other"})
        assert other[0] == 200 and "X-Semcache-Budget" not in other[2]
    assert [r.body["model"] for r in fake.calls()] == ["gpt-4o-mini", "cheap", "gpt-4o-mini"]


async def budget_spend(sidecar: Sidecar) -> float:
    spend = await sidecar.metric("semcache_budget_spend_usd", scope="global", period="day")
    assert spend is not None
    return spend


async def test_every_answer_the_upstream_charges_for_is_billed(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    """A tool call is paid for though never stored; a stream cut short before its usage chunk
    is billed by the tokenizer's count of the prompt and of what came."""
    fake = fakes[0]
    fake.script += [Behaviour(finish_reason="tool_calls"), Behaviour(cut_after_chunks=4)]
    settings = budget_settings(daily_usd=100.0)  # $1 per 1K tokens
    async with start_sidecar(tmp_path, WordHashEmbedder(), fake, **settings) as sidecar:
        status, body, _ = await chat(sidecar, "call a tool please")
        assert status == 200 and body["choices"][0]["finish_reason"] == "tool_calls"
        tool_call = await budget_spend(sidecar)
        assert tool_call == pytest.approx(sum(body["usage"].values()) / 2 / 1000)
        messages = [{"role": "user", "content": "tell me a long story"}]
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                sidecar.url + "/v1/chat/completions",
                data=orjson.dumps({"model": "gpt-4o-mini", "messages": messages, "stream": True}),
                headers={"Authorization": "Bearer sk-raw"},
            ) as response,
        ):
            assert "stream_interrupted" in (await response.read()).decode()
        came = "Answer #2 to: "  # the role chunk and three words, then the connection drops
        estimate = count_messages(messages) + count_text(came)
        assert await budget_spend(sidecar) - tool_call == pytest.approx(estimate / 1000)
        status, _, headers = await chat(sidecar, "call a tool please")
        assert status == 200 and headers["X-Semcache"] == "miss"  # the tool call was not stored
    assert len(fake.calls()) == 3


async def test_embeddings_are_billed_and_refused_once_the_budget_is_spent(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    fake = fakes[0]
    settings = {
        "budgets": parse_budgets({"daily_usd": 0.003}),
        "prices": PriceTable({"text-embedding-3-small": Price(1.0, 0.0)}),  # 2 tokens: $0.002
    }
    body = orjson.dumps({"model": "text-embedding-3-small", "input": "hello"})
    async with start_sidecar(tmp_path, WordHashEmbedder(), fake, **settings) as sidecar:
        assert (await sidecar.post("/v1/embeddings", body))[0] == 200
        assert await budget_spend(sidecar) == pytest.approx(0.002)
        assert (await sidecar.post("/v1/embeddings", body))[0] == 200
        status, answer, _ = await sidecar.post("/v1/embeddings", body)
        assert status == 429 and answer["error"]["code"] == "budget_exceeded"
    assert len(fake.received) == 2


async def test_only_configured_clients_are_served_each_in_its_own_tenant(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    fake = fakes[0]
    tables = [
        {"name": "checkout", "api_keys": ["sk-checkout"]},
        {"name": "search", "api_keys": ["env:SEARCH_KEY"]},
    ]
    settings = {
        "clients": parse_clients(tables, {"SEARCH_KEY": "sk-search"}),
        **budget_settings(tenants={"search": {"daily_usd": 0.001}}),
    }
    checkout = {"Authorization": "Bearer sk-checkout"}
    search = {"Authorization": "", "api-key": "sk-search"}  # Azure's header works too
    async with sidecar_with(tmp_path, fake, [pool(fake)], **settings) as sidecar:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer sk-stranger"}):
            status, body, _ = await chat(sidecar, "hello", headers)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
            assert body["error"]["type"] == "authentication_error"
        async with aiohttp.ClientSession() as session:
            models = await session.get(sidecar.url + "/v1/models")
            assert models.status == 401
            assert (await session.get(sidecar.url + "/healthz")).status == 200
            stats = await (await session.get(sidecar.url + "/stats")).json()
            assert stats["clients"] == ["checkout", "search"]
        assert fake.received == []
        status, _, headers = await chat(sidecar, "What is the capital of France?", checkout)
        assert status == 200 and headers["X-Semcache"] == "miss"
        status, _, headers = await chat(sidecar, "What is the capital of France?", checkout)
        assert status == 200 and headers["X-Semcache"] == "hit"
        status, _, headers = await chat(sidecar, "What is the capital of France?", search)
        assert status == 200 and headers["X-Semcache"] == "miss"  # never checkout's answer
        status, body, _ = await chat(sidecar, "and of Spain?", search)  # search's own cap
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        status, _, _ = await chat(sidecar, "and of Spain?", checkout)
        assert status == 200
    assert {r.headers["Authorization"] for r in fake.received} == {"Bearer sk-pool-0"}


def test_clients_need_pool_keys_and_unique_names_and_keys() -> None:
    upstream = parse_upstreams([{"name": "main", "base_url": "http://127.0.0.1:9/v1"}], {})
    clients = parse_clients([{"name": "app", "api_keys": ["sk-app"]}], {})
    with pytest.raises(ConfigError, match="every upstream needs its api_keys"):
        ServerConfig(upstreams=upstream, clients=clients)
    with pytest.raises(ConfigError, match="every upstream needs its api_keys"):
        ServerConfig(clients=clients)  # the caller's key would be passed through
    bad = [
        ([{"name": "key-abc", "api_keys": ["k"]}], "name must be"),
        ([{"name": "a b", "api_keys": ["k"]}], "name must be"),
        ([{"name": "app", "api_keys": []}], "non-empty list"),
        ([{"name": "app", "api_keys": ["env:MISSING"]}], "MISSING is not set"),
        ([{"name": "app", "api_keys": ["k"], "budget": 1}], "unknown field"),
        ([{"name": "a", "api_keys": ["k"]}, {"name": "a", "api_keys": ["j"]}], "unique"),
        ([{"name": "a", "api_keys": ["k"]}, {"name": "b", "api_keys": ["k"]}], "one client"),
    ]
    for tables, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_clients(tables, {})


async def test_degraded_mode_serves_a_looser_match_under_backlog(
    tmp_path: Path, fakes: list[FakeOpenAI]
) -> None:
    fake = fakes[0]
    table = pool(fake, rpm=6)
    settings = {"degraded_min_similarity": 0.5, "min_similarity": 0.99}
    async with sidecar_with(tmp_path, fake, [table], **settings) as sidecar:
        assert (await chat(sidecar, "how do i reset my router password"))[0] == 200
        status, _, headers = await chat(sidecar, "how do i reset the router password quickly")
        assert status == 200
        assert headers["X-Semcache"] == "hit" and headers["X-Semcache-Degraded"] == "true"
    assert len(fake.calls()) == 1


def test_upstream_tables_are_checked() -> None:
    good = {"name": "a", "base_url": "https://api.example.com/v1", "api_keys": ["k"]}
    assert parse_upstreams([good], {})[0].keys[0].id == "a#0"
    for bad, message in [
        ({**good, "kind": "bedrock"}, "kind must be one of"),
        ({**good, "api_keys": ["env:MISSING"]}, "MISSING is not set"),
        ({**good, "rpm": -1}, "rpm must be a positive"),
        ({"name": "a", "base_url": "https://x", "rpm": 10}, "needs api_keys"),
        ({**good, "kind": "azure"}, "needs api_version"),
        ({**good, "deployments": {"m": "d"}}, "for kind = 'azure' only"),
        ({**good, "colour": "blue"}, "unknown field"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_upstreams([bad], {})
    with pytest.raises(ConfigError, match="unique"):
        parse_upstreams([good, good], {})


def test_the_config_file_holds_upstreams_clients_budgets_and_prices(tmp_path: Path) -> None:
    from semcache.settings import load_config

    path = tmp_path / "semcache.toml"
    path.write_text(
        """
port = 9000

[[upstreams]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_keys = ["env:K1", "literal-key"]
rpm = 500
tpm = 30000

[[clients]]
name = "checkout"
api_keys = ["env:CHECKOUT_KEY"]

[budgets]
daily_usd = 5
on_exceeded = "reject"

[prices."my-model"]
input_per_1k = 0.5
output_per_1k = 1.5
"""
    )
    config = load_config(environ={"K1": "sk-one", "CHECKOUT_KEY": "sk-co"}, config_file=path)
    assert config.port == 9000
    assert [k.secret for k in config.upstreams[0].keys] == ["sk-one", "literal-key"]
    assert config.budgets is not None and config.budgets.overall.daily_usd == 5
    assert config.prices.price("my-model") == Price(0.5, 1.5)
    assert "sk-one" not in repr(config.upstreams)
    assert [c.name for c in config.clients] == ["checkout"] and config.clients[0].keys == ("sk-co",)
    assert "sk-co" not in repr(config.clients)


def test_limits_pace_bursts_and_learn_from_the_upstream() -> None:
    from semcache.upstream.limits import KeyLimiter, parse_duration

    now = [1000.0]
    limiter = KeyLimiter("k#0", rpm=60, tpm=1000, clock=lambda: now[0])
    assert limiter.wait_time(10) == 0
    limiter.reserve(10)
    # Paced at 1.5x the steady rate: the next request waits 1 / 1.5 s, not a full second,
    # and 10 tokens at 1.5 x 1000/60 per second take 0.4 s of that.
    assert limiter.wait_time(10) == pytest.approx(1 / 1.5)
    now[0] += 1
    # More than a minute's tokens: sent once the bucket is full; the upstream has the last word.
    assert limiter.wait_time(2000) == 0
    limiter.learn({"x-ratelimit-remaining-tokens": "0"}, 200)
    assert limiter.wait_time(100) == pytest.approx(6.0)  # 100 tokens at 1000/60 per second
    limiter.learn({"Retry-After": "20"}, 429)
    assert limiter.wait_time(1) == pytest.approx(20.0)
    limiter.learn({"x-ratelimit-limit-requests": "30"}, 200)  # the key's real limit
    assert limiter.requests is not None and limiter.requests.capacity == 30
    assert parse_duration("6m0s") == 360 and parse_duration("20ms") == 0.02
    assert parse_duration("soon") is None


def test_a_reservation_is_settled_from_usage() -> None:
    from semcache.upstream.limits import KeyLimiter

    now = [0.0]
    limiter = KeyLimiter("k#0", rpm=None, tpm=600, clock=lambda: now[0])
    reservation = limiter.reserve(500)
    limiter.settle(reservation, 50)  # the answer was short: 450 tokens come back
    assert limiter.tokens is not None and limiter.tokens.level == pytest.approx(550)
    # ... and so does the time their pacing took: 50 tokens at 15/s.
    assert limiter.wait_time(1) == pytest.approx(50 / 15)


def test_the_ledger_rolls_over_by_utc_day_and_warns_once(tmp_path: Path) -> None:
    from semcache.budgets import SpendLedger

    now = [1_767_225_000.0]  # 2025-12-31 23:50 UTC
    config = parse_budgets({"daily_usd": 1.0, "monthly_usd": 10.0, "tenant_daily_usd": 0.5})
    ledger = SpendLedger(tmp_path, config, clock=lambda: now[0])
    warnings = ledger.record("key-a", 0.6)
    assert {(w.scope, w.period, w.fraction) for w in warnings} == {
        ("global", "day", 0.5),
        ("key-a", "day", 0.5),
        ("key-a", "day", 0.8),
        ("key-a", "day", 0.9),
        ("key-a", "day", 1.0),
    }
    assert ledger.admit("key-a", "gpt-4o").refused
    assert not ledger.admit("key-b", "gpt-4o").refused  # another tenant
    ledger.close()
    ledger = SpendLedger(tmp_path, config, clock=lambda: now[0])
    assert ledger.record("key-a", 0.001) == []  # no second warning, also after reopening
    assert ledger.spent("global", "day") == pytest.approx(0.601)
    now[0] += 15 * 60  # 2026-01-01 00:05 UTC: a new day and a new month
    assert ledger.spent("global", "day") == 0 and ledger.spent("global", "month") == 0
    assert not ledger.admit("key-a", "gpt-4o").refused
    ledger.close()
