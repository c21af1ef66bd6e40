"""Health checks: a failing upstream leaves the rotation before a user's request meets it, and
comes back when it answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from semcache.errors import ConfigError
from semcache.server.state import STATE
from semcache.settings import ServerConfig
from semcache.upstream.health import HealthChecks
from semcache.upstream.router import Router
from semcache.upstream.specs import parse_upstreams
from tests.fake_openai import FakeOpenAI
from tests.sidecar import Sidecar
from tests.test_upstreams import chat, pool, sidecar_with


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI]]:
    primary, backup = FakeOpenAI(), FakeOpenAI()
    await primary.start()
    await backup.start()
    yield primary, backup
    await primary.stop()
    await backup.stop()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def chats(fake: FakeOpenAI) -> int:
    return sum(r.path == "/v1/chat/completions" for r in fake.received)


async def health_of(sidecar: Sidecar, name: str) -> dict[str, object]:
    stats = await sidecar.get("/stats")
    return next(h for h in stats["health"] if h["upstream"] == name)


async def test_a_failing_upstream_leaves_the_rotation_and_comes_back(
    tmp_path: Path, pair: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    primary, backup = pair
    tables = [pool(primary, "primary"), pool(backup, "backup", priority=1)]
    async with sidecar_with(
        tmp_path, primary, tables, health_check_interval_s=0.1, breaker_failures=100
    ) as sidecar:
        await until(lambda: any(r.path == "/v1/models" for r in backup.received))
        assert (await health_of(sidecar, "primary"))["up"] is True
        probe = next(r for r in primary.received if r.path == "/v1/models")
        assert probe.key == "sk-pool-0"  # probed with the upstream's own key
        status, _, headers = await chat(sidecar, "first question")
        assert status == 200 and headers["X-Semcache-Upstream"] == "primary"

        primary.down = True
        await until(lambda: not sidecar.app[STATE].router.in_rotation("primary"))
        health = await health_of(sidecar, "primary")
        assert health["up"] is False and health["last_status"] == 503
        assert await sidecar.metric("semcache_upstream_up", upstream="primary") == 0.0
        assert await sidecar.metric("semcache_upstream_up", upstream="backup") == 1.0
        before = chats(primary)
        status, _, headers = await chat(sidecar, "second question")
        # The user's request went straight to the backup: it never met the failing primary.
        assert status == 200 and headers["X-Semcache-Upstream"] == "backup"
        assert "X-Semcache-Retries" not in headers and chats(primary) == before

        primary.down = False
        await until(lambda: sidecar.app[STATE].router.in_rotation("primary"))
        status, _, headers = await chat(sidecar, "third question")
        assert status == 200 and headers["X-Semcache-Upstream"] == "primary"
        downs = await sidecar.metric(
            "semcache_upstream_health_checks_total", upstream="primary", outcome="down"
        )
        assert downs is not None and downs >= 2


async def test_one_failed_probe_is_not_enough_and_every_upstream_down_still_sends(
    pair: tuple[FakeOpenAI, FakeOpenAI],
) -> None:
    primary, _ = pair
    router = Router(parse_upstreams([pool(primary, "only")], {}))
    await router.start()
    checks = HealthChecks(router, interval_s=60, failures=2)
    try:
        primary.down = True
        assert (await checks.probe("only")).up  # a blip is not an outage
        health = await checks.probe("only")
        assert not health.up and health.failures == 2 and not router.in_rotation("only")
        # The only upstream that serves the request is out: it is sent all the same (the
        # breaker, not a probe, decides when to stop sending).
        assert [t.upstream.name for t in router._eligible("gpt-4o-mini", set())] == ["only"]
        primary.down = False
        assert (await checks.probe("only")).up and router.in_rotation("only")
    finally:
        await router.close()


async def test_an_unreachable_upstream_fails_its_probe_within_the_timeout() -> None:
    # A port nothing listens on: the connection is refused at once.
    router = Router(parse_upstreams([{"name": "gone", "base_url": "http://127.0.0.1:9/v1"}], {}))
    await router.start()
    checks = HealthChecks(router, interval_s=60, failures=1, timeout_s=2)
    try:
        health = await checks.probe("gone")
        assert not health.up and health.last_status is None
        assert health.last_error is not None and "unreachable" in health.last_error
    finally:
        await router.close()


def test_health_check_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="health_check_interval_s"):
        ServerConfig(health_check_interval_s=-1)
    with pytest.raises(ConfigError, match="health_check_timeout_s"):
        ServerConfig(health_check_timeout_s=0)
