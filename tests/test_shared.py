"""Several sidecars sharing one budget through a real Redis; Redis away never fails a request
and loses no spend."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from semcache.budgets import GLOBAL, SpendLedger, parse_budgets
from semcache.errors import ConfigError
from semcache.server.state import STATE
from semcache.settings import load_config
from semcache.shared.counters import DiskCounters, SharedCounters
from semcache.shared.link import RedisLink
from tests.conftest import CountingEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.redis_server import RedisServer
from tests.sidecar import Sidecar, ask, start_sidecar

BUDGETS = parse_budgets({"daily_usd": 1.0, "warn_at": [0.5]})


def shared_ledger(directory: Path, url: str) -> tuple[SpendLedger, RedisLink]:
    link = RedisLink(url, retry_s=0.2)
    counters = SharedCounters(link, DiskCounters(directory))
    return SpendLedger(directory, BUDGETS, clock=time.time, counters=counters), link


def test_two_ledgers_on_one_redis_share_spend_and_warn_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    one, _ = shared_ledger(tmp_path / "one", redis_server.url)
    two, _ = shared_ledger(tmp_path / "two", redis_server.url)
    try:
        assert one.record("tenant-a", 0.3) == []
        warnings = two.record("tenant-b", 0.3)  # 0.6 in total: past 50%, once
        assert [(w.scope, w.fraction) for w in warnings] == [(GLOBAL, 0.5)]
        assert one.record("tenant-a", 0.1) == []  # not again on the other sidecar
        assert one.spent(GLOBAL, "day") == pytest.approx(0.7)
        assert two.spent("tenant-a", "day") == pytest.approx(0.4)
        two.record("tenant-b", 0.4)
        assert one.admit("tenant-a", "gpt-4o").refused  # the cap is reached for both
    finally:
        one.close()
        two.close()


def test_spend_made_while_redis_is_away_reaches_it_when_it_is_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    one, link = shared_ledger(tmp_path / "one", redis_server.url)
    two, _ = shared_ledger(tmp_path / "two", redis_server.url)
    try:
        one.record("tenant-a", 0.1)
        redis_server.stop()
        started = time.monotonic()
        one.record("tenant-a", 0.2)  # no exception, no long wait
        one.record("tenant-a", 0.05)
        assert time.monotonic() - started < 2
        assert one.spent(GLOBAL, "day") == pytest.approx(0.35)  # its own view meanwhile
        assert link.errors >= 1
        port = redis_server.port
        redis_server.start()  # a fresh, empty Redis on the same port
        assert redis_server.port == port
        time.sleep(0.3)  # the link's pause after the failure
        one.record("tenant-a", 0.01)
        # What was spent while it was away is in Redis now (the first 0.1 was lost with the
        # old server's memory: an empty Redis, as after a restart without persistence).
        assert two.spent(GLOBAL, "day") == pytest.approx(0.26)
    finally:
        one.close()
        two.close()


def test_a_password_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path, password="s3cret-pw")
    server.start()
    try:
        monkeypatch.setenv("SEMCACHE_TEST_REDIS_PW", "s3cret-pw")
        link = RedisLink(server.url, password="env:SEMCACHE_TEST_REDIS_PW")
        assert link.call(lambda client: client.ping())
        link.close()
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        assert RedisLink(url).call(lambda client: client.ping())
        with pytest.raises(ConfigError, match="UNSET_VARIABLE"):
            RedisLink(server.url, password="env:UNSET_VARIABLE")
    finally:
        server.stop()


def test_a_bad_redis_url_stops_the_server_at_start() -> None:
    with pytest.raises(ConfigError, match="redis"):
        load_config({"redis": "http://127.0.0.1:6379"}, environ={})


async def test_two_sidecars_share_one_budget_and_redis_away_fails_no_request(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI, redis_server: RedisServer
) -> None:
    upstream.default = Behaviour(prompt_tokens=200_000)  # $0.03 a request at gpt-4o-mini
    budgets = parse_budgets({"daily_usd": 0.10, "on_exceeded": "reject"})
    settings = {"redis": redis_server.url, "budgets": budgets}
    async with (
        start_sidecar(tmp_path / "a", embedder, upstream, **settings) as one,
        start_sidecar(tmp_path / "b", embedder, upstream, **settings) as two,
    ):

        async def ask_miss(sidecar: Sidecar, text: str) -> int:
            status, _, _ = await sidecar.post("/v1/chat/completions", orjson.dumps(ask(text)))
            return int(status)

        def spent(sidecar: Sidecar) -> float:
            ledger = sidecar.app[STATE].ledger
            assert ledger is not None
            return float(ledger.spent(GLOBAL, "day"))

        assert await ask_miss(one, "First question?") == 200
        assert await ask_miss(two, "Second question?") == 200
        assert spent(one) == pytest.approx(0.06, rel=0.01) == spent(two)
        redis_server.stop()
        # Redis away: a miss is still served, the spend kept locally, the failure counted.
        assert await ask_miss(one, "Third question?") == 200
        metrics = await one.get_text("/metrics")
        errors = next(
            line for line in metrics.splitlines() if line.startswith("semcache_redis_errors_total")
        )
        assert float(errors.split()[1]) >= 1
        redis_server.start()  # empty, as after a restart without persistence
        await asyncio.sleep(1.2)  # the link's pause after its failure
        assert await ask_miss(one, "Fourth question?") == 200  # brings the third's spend along
        assert spent(two) == pytest.approx(0.06, rel=0.01)
        assert await ask_miss(two, "Fifth question?") == 200
        assert await ask_miss(two, "Sixth question?") == 200
        # $0.12 spent across the two since the restart: the cap holds on both.
        assert await ask_miss(one, "Seventh question?") == 429
        assert await ask_miss(two, "Eighth question?") == 429


# -- shared key limits ---------------------------------------------------------------------


def shared_limiter(url: str, name: str, *, rpm: float, share: float = 0.5) -> Any:
    from semcache.shared.limits import SharedKeyLimiter

    link = RedisLink(url, retry_s=0.3)
    return SharedKeyLimiter(
        "pool#1", rpm=rpm, tpm=None, clock=time.monotonic, link=link, name=name,
        local_share=share,
    )  # fmt: skip


def _takes(limiters: list[Any], seconds: float) -> int:
    """Requests the limiters grant together in ``seconds``, asking in turn."""
    taken = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for limiter in limiters:
            if limiter.try_reserve(10) is not None:
                taken += 1
        time.sleep(0.005)
    return taken


def test_sidecars_sharing_a_key_take_together_what_one_alone_may(
    redis_server: RedisServer,
) -> None:
    alone = _takes([shared_limiter(redis_server.url, "k-alone", rpm=600)], 1.0)
    together = _takes(
        [shared_limiter(redis_server.url, "k-together", rpm=600) for _ in range(3)], 1.0
    )
    # 600 RPM paced at 1.5x: ~15 a second, for one sidecar or for three together.
    assert 10 <= alone <= 18
    assert together <= alone + 2


def test_a_429_pauses_the_key_for_every_sidecar(redis_server: RedisServer) -> None:
    one = shared_limiter(redis_server.url, "k-paused", rpm=600)
    two = shared_limiter(redis_server.url, "k-paused", rpm=600)
    one.learn({"retry-after": "2"}, 429)
    assert two.try_reserve(1) is None
    assert two.wait_time(1) > 1.0


def test_with_redis_away_a_key_falls_back_to_its_local_share(
    redis_server: RedisServer,
) -> None:
    limiter = shared_limiter(redis_server.url, "k-away", rpm=600, share=0.5)
    redis_server.stop()
    first = limiter.try_reserve(1)
    assert first is not None and not first.shared
    # The local bucket holds half the key's limit, paced: about 7.5 a second.
    assert _takes([limiter], 1.0) <= 9


async def test_two_sidecars_pace_one_pool_key_together(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI, redis_server: RedisServer
) -> None:
    from semcache.upstream.specs import parse_upstreams

    specs = parse_upstreams(
        [{"name": "pool", "base_url": upstream.url, "api_keys": ["k1"], "rpm": 120}], {}
    )
    settings = {"redis": redis_server.url, "upstreams": specs}
    async with (
        start_sidecar(tmp_path / "a", embedder, upstream, **settings) as one,
        start_sidecar(tmp_path / "b", embedder, upstream, **settings) as two,
    ):
        replies = await asyncio.gather(
            *(
                sidecar.post("/v1/chat/completions", orjson.dumps(ask(f"Question {i}, {j}?")))
                for i in range(6)
                for j, sidecar in enumerate((one, two))
            )
        )
        assert all(status == 200 for status, _, _ in replies)
        arrivals = sorted(call.at for call in upstream.calls())
        # 120 RPM paced at 1.5x is 3 a second for the key, whichever sidecar sends: 12
        # requests take 11/3 s at least (each sidecar on its own would take 5/3 s).
        assert arrivals[-1] - arrivals[0] >= 3.3


# -- shared breakers -----------------------------------------------------------------------


def test_a_breaker_opened_by_one_sidecar_is_open_for_all(redis_server: RedisServer) -> None:
    from semcache.shared.breakers import SharedCircuitBreaker, breaker_name

    def breaker() -> SharedCircuitBreaker:
        return SharedCircuitBreaker(
            failures=3, reset_s=5.0, clock=time.monotonic, name="main",
            link=RedisLink(redis_server.url), key=breaker_name("http://upstream.example/v1"),
        )  # fmt: skip

    one, two = breaker(), breaker()
    assert two.allows()
    for _ in range(3):
        one.on_failure()
    assert one.state == one.OPEN
    time.sleep(0.6)  # past the other's cached view
    assert not two.allows() and two.state == two.OPEN
    assert 3.0 < two.retry_in() <= 5.0
    one.on_success()  # the upstream answers again: closed everywhere
    time.sleep(0.6)
    assert two.allows() and two.state == two.CLOSED
    redis_server.stop()
    assert two.allows()  # Redis away: the breaker is local again


# -- single-flight across sidecars ---------------------------------------------------------


async def test_identical_misses_on_two_sidecars_make_one_upstream_call(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI, redis_server: RedisServer
) -> None:
    upstream.default = Behaviour(delay_s=0.5)
    settings = {"redis": redis_server.url}
    async with (
        start_sidecar(tmp_path / "a", embedder, upstream, **settings) as one,
        start_sidecar(tmp_path / "b", embedder, upstream, **settings) as two,
    ):
        body = orjson.dumps(ask("What is the boiling point of water at sea level?"))
        first, second = await asyncio.gather(
            one.post("/v1/chat/completions", body), two.post("/v1/chat/completions", body)
        )
        assert first[0] == second[0] == 200
        assert first[1]["choices"] == second[1]["choices"]
        assert len(upstream.calls()) == 1
        assert "true" in (
            first[2].get("X-Semcache-Coalesced"),
            second[2].get("X-Semcache-Coalesced"),
        )
        # Another tenant's identical question is never answered from this flight.
        other = {"Authorization": "Bearer sk-other-tenant"}
        await asyncio.gather(
            one.post("/v1/chat/completions", orjson.dumps(ask("Is water wet?")), other),
            two.post("/v1/chat/completions", orjson.dumps(ask("Is water wet?"))),
        )
        assert len(upstream.calls()) == 3


async def test_a_waiter_whose_leader_dies_goes_upstream_itself(
    redis_server: RedisServer,
) -> None:
    from semcache.shared.flights import SharedFlights

    leader = SharedFlights(RedisLink(redis_server.url), lock_s=0.5)
    waiter = SharedFlights(RedisLink(redis_server.url), lock_s=0.5)
    assert leader.lead("tenant-a\x1fkey")
    assert not waiter.lead("tenant-a\x1fkey")
    leader.close()  # the leader dies: it stops renewing its lock, and never publishes
    started = time.monotonic()
    assert await waiter.wait("tenant-a\x1fkey", timeout_s=5) is None
    assert time.monotonic() - started < 1.5
    # A leader that finishes hands its answer over.
    assert waiter.lead("tenant-a\x1fother")
    task = asyncio.ensure_future(leader.wait("tenant-a\x1fother", timeout_s=5))
    await asyncio.sleep(0.05)
    waiter.finish("tenant-a\x1fother", {"answer": 42})
    assert await task == {"answer": 42}


# -- separate processes ----------------------------------------------------------------------


async def test_three_sidecar_processes_share_key_limits_and_one_budget(
    tmp_path: Path, upstream: FakeOpenAI, redis_server: RedisServer
) -> None:
    """Three ``semcache serve`` processes with one Redis behind one pool key: the key's pace
    holds for their sum, their spend is one ledger, an entry stored through one is a hit
    through the others, and a mark-wrong through one reaches all."""
    import os
    import subprocess
    import sys

    import aiohttp

    from tests.redis_server import free_ports

    config = tmp_path / "semcache.toml"
    config.write_text(
        f'redis = "{redis_server.url}"\n'
        'log_level = "warning"\n'
        'admin_token = "s3cret"\n'
        "[budgets]\ndaily_usd = 100.0\n"
        f'[[upstreams]]\nname = "pool"\nbase_url = "{upstream.url}"\n'
        'api_keys = ["k1"]\nrpm = 120\n'
    )
    ports = free_ports(3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parent.parent

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "semcache", "serve", "--config", str(config),
            "--port", str(port), "--cache-dir", str(tmp_path / f"cache-{port}"),
        ]  # fmt: skip

    def start(port: int) -> subprocess.Popen[bytes]:
        with (tmp_path / f"sidecar-{port}.log").open("wb") as stderr:  # the child keeps a copy
            return subprocess.Popen(
                command(port), cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )

    processes = [start(port) for port in ports]
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(len(ports)):
                deadline = time.monotonic() + 180
                while True:
                    if processes[n].poll() is not None:
                        log = (tmp_path / f"sidecar-{ports[n]}.log").read_text()
                        # A port found free can be taken as the local end of a connection
                        # before the sidecar listens on it: start that one again elsewhere.
                        assert "cannot listen" in log, f"a sidecar exited: {log[-3000:]}"
                        ports[n] = free_ports(1)[0]
                        processes[n] = start(ports[n])
                    assert time.monotonic() < deadline, "a sidecar did not start"
                    try:
                        async with session.get(f"http://127.0.0.1:{ports[n]}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.3)

            async def one(port: int, text: str) -> int:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    data=orjson.dumps(ask(text)),
                    headers={"Authorization": "Bearer sk-app", "Content-Type": "application/json"},
                ) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(
                *(one(port, f"Question {i} asked of {port}?") for i in range(4) for port in ports)
            )
            assert statuses == [200] * 12
            arrivals = sorted(call.at for call in upstream.calls())
            assert len(arrivals) == 12
            # 3 a second for the key in total: 11/3 s at least (each alone: 1 s for its 4).
            assert arrivals[-1] - arrivals[0] >= 3.3
            spent = []
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/stats") as r:
                    spent.append((await r.json())["budgets"]["day"]["spent_usd"])
            assert spent[0] > 0 and spent[0] == spent[1] == spent[2]
            # An entry stored through one process is a hit through the others ...
            asked = f"Question 0 asked of {ports[0]}?"
            for port in ports[1:]:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    data=orjson.dumps(ask(asked)),
                    headers={"Authorization": "Bearer sk-app", "Content-Type": "application/json"},
                ) as r:
                    assert r.headers["X-Semcache"] == "hit"
            assert len(upstream.calls()) == 12
            # ... and once marked wrong through one, it is served by none.
            admin = {"Authorization": "Bearer s3cret"}
            async with session.get(
                f"http://127.0.0.1:{ports[2]}/admin/entries?limit=100", headers=admin
            ) as r:
                listed = (await r.json())["data"]
            [entry] = [e for e in listed if e["prompt"] == asked]
            async with session.post(
                f"http://127.0.0.1:{ports[2]}/admin/entries/{entry['id']}/wrong", headers=admin
            ) as r:
                assert r.status == 200
            await asyncio.sleep(0.5)
            for port in ports[:2]:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    data=orjson.dumps(ask(asked)),
                    headers={"Authorization": "Bearer sk-app", "Content-Type": "application/json"},
                ) as r:
                    served = await r.json()
                wrong_text = entry["response"]["choices"][0]["message"]["content"]
                assert served["choices"][0]["message"]["content"] != wrong_text
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


async def test_redis_killed_and_restarted_under_traffic_loses_no_request(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI, redis_server: RedisServer
) -> None:
    from semcache.upstream.specs import parse_upstreams

    upstream.default = Behaviour(delay_s=0.05)
    specs = parse_upstreams(
        [{"name": "pool", "base_url": upstream.url, "api_keys": ["k1", "k2"], "rpm": 6000}], {}
    )
    settings = {
        "redis": redis_server.url,
        "upstreams": specs,
        "budgets": parse_budgets({"daily_usd": 100.0}),
    }
    async with (
        start_sidecar(tmp_path / "a", embedder, upstream, **settings) as one,
        start_sidecar(tmp_path / "b", embedder, upstream, **settings) as two,
    ):
        statuses: list[int] = []

        async def traffic(sidecar: Sidecar, name: str) -> None:
            for i in range(30):
                # misses, and repeats of earlier questions (hits), from two tenants
                text = f"Question {i % 20} from {name}?"
                key = "sk-a" if i % 2 else "sk-b"
                status, _, _ = await sidecar.post(
                    "/v1/chat/completions",
                    orjson.dumps(ask(text)),
                    {"Authorization": f"Bearer {key}"},
                )
                statuses.append(status)
                await asyncio.sleep(0.05)

        async def outage() -> None:
            await asyncio.sleep(0.5)
            redis_server.stop()
            await asyncio.sleep(1.0)
            redis_server.start()

        await asyncio.gather(traffic(one, "one"), traffic(two, "two"), outage())
        assert statuses == [200] * 60
        metrics = await one.get_text("/metrics")
        errors = [
            line for line in metrics.splitlines() if line.startswith("semcache_redis_errors_total")
        ]
        assert errors and float(errors[0].split()[1]) >= 1


# -- shared entries ------------------------------------------------------------------------


def _cache(directory: Path, url: str) -> Any:
    from semcache import SemanticCache
    from tests.conftest import WordHashEmbedder

    return SemanticCache(
        directory, embedder=WordHashEmbedder(), verifier=None, redis=RedisLink(url, retry_s=0.2)
    )


def _until(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _answer(cache: Any, prompt: str) -> Any:
    hit = cache.get(prompt)
    return None if hit is None else hit.response


def test_an_entry_stored_through_one_cache_is_a_hit_through_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    one = _cache(tmp_path / "one", redis_server.url)
    two = _cache(tmp_path / "two", redis_server.url)
    try:
        one.put("how do I reset my password", {"text": "Settings > Security"}, namespace="t1")
        assert _until(lambda: two.get("how do I reset my password", namespace="t1") is not None)
        hit = two.get("how do I reset my password please", namespace="t1")
        assert hit is not None and hit.response == {"text": "Settings > Security"}
        assert hit.reason.value == "semantic"  # the vector came along: found by meaning
        assert two.get("how do I reset my password", namespace="t2") is None  # tenants apart
        # A deletion and a mark-wrong reach the other cache too.
        one.put("what is the refund window", {"text": "30 days"}, namespace="t1")
        assert _until(lambda: len(two) == 2)
        [first] = [e for e in one.entries(namespace="t1") if e.prompt.startswith("how")]
        one.mark_wrong(first.entry_id)
        assert _until(lambda: two.get("how do I reset my password", namespace="t1") is None)
        [second] = list(one.entries(namespace="t1"))
        one.delete(second.entry_id)
        assert _until(lambda: len(two) == 0)
        # Nothing came back the other way: each applies the others' events only.
        assert len(one) == 0
    finally:
        one.close()
        two.close()


def test_a_cache_catches_up_after_a_restart_and_a_new_one_warms_from_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    one = _cache(tmp_path / "one", redis_server.url)
    two = _cache(tmp_path / "two", redis_server.url)
    one.put("first question", "first answer")
    assert _until(lambda: len(two) == 1)
    two.close()
    one.put("second question", "second answer")
    two = _cache(tmp_path / "two", redis_server.url)  # resumes where it stopped
    three = _cache(tmp_path / "three", redis_server.url)  # new: warms from the stream
    try:
        assert len(two) == 2 and len(three) == 2
        assert _answer(three, "second question") == "second answer"
        # Redis away: stores succeed, and reach the others once it is back.
        redis_server.stop()
        one.put("third question", "third answer")
        redis_server.start()
        assert _until(lambda: _answer(two, "third question") == "third answer", timeout_s=10)
    finally:
        one.close()
        two.close()
        three.close()


async def test_two_sidecars_share_one_cache(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI, redis_server: RedisServer
) -> None:
    from semcache import SemanticCache
    from semcache.server import create_app
    from semcache.settings import ServerConfig
    from tests.sidecar import serving

    caches, urls = [], []
    async with contextlib.AsyncExitStack() as stack:
        for name in ("a", "b"):
            config = ServerConfig(
                upstream=upstream.url, cache_dir=tmp_path / name, redis=redis_server.url
            )
            cache = SemanticCache(
                config.cache_dir, config=config.cache_config(), embedder=embedder,
                redis=RedisLink(redis_server.url),
            )  # fmt: skip
            stack.callback(cache.close)
            caches.append(cache)
            urls.append(await stack.enter_async_context(serving(create_app(config, cache=cache))))
        async with aiohttp.ClientSession() as session:

            async def post(url: str, text: str) -> tuple[Any, dict[str, str]]:
                async with session.post(
                    url + "/v1/chat/completions",
                    data=orjson.dumps(ask(text)),
                    headers={"Authorization": "Bearer sk-app", "Content-Type": "application/json"},
                ) as r:
                    return await r.json(), dict(r.headers)

            answer, headers = await post(urls[0], "What is the capital of Australia?")
            assert headers["X-Semcache"] == "miss"
            for _ in range(100):
                if len(caches[1]) == 1:
                    break
                await asyncio.sleep(0.02)
            again, headers = await post(urls[1], "What's the capital city of Australia?")
            assert headers["X-Semcache"] == "hit", headers
            assert (
                again["choices"][0]["message"]["content"]
                == (answer["choices"][0]["message"]["content"])
            )
            assert len(upstream.calls()) == 1


def test_the_scale_out_compose_file_runs_redis_and_two_sidecars_behind_one_port() -> None:
    import re
    import shutil
    import subprocess

    import yaml

    deploy = Path(__file__).resolve().parent.parent / "deploy"
    compose = yaml.safe_load((deploy / "compose.scaleout.yml").read_text())
    services = compose["services"]
    sidecars = [name for name in services if name.startswith("semcache-")]
    assert len(sidecars) == 2 and "redis" in services
    for name in sidecars:
        environment = services[name]["environment"]
        assert environment["SEMCACHE_REDIS"] == "redis://redis:6379/0"
        # Every variable is a setting the sidecar accepts.
        config = load_config(environ={k: v for k, v in environment.items() if v and "$" not in v})
        assert config.redis == "redis://redis:6379/0"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["front"]["ports"] == ["8080:8080"]
    nginx = (deploy / "nginx.scaleout.conf").read_text()
    assert sorted(re.findall(r"server (semcache-\d):8080", nginx)) == sorted(sidecars)
    assert "proxy_buffering off" in nginx  # streams pass through as they come
    docker = shutil.which("docker")
    has_compose = docker is not None and (
        subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    )
    if has_compose:  # the compose plugin's own check, where it is installed
        assert docker is not None
        subprocess.run(
            [docker, "compose", "-f", str(deploy / "compose.scaleout.yml"), "config", "-q"],
            check=True,
        )


def test_an_eviction_by_one_copy_reaches_the_others(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from semcache import SemanticCache
    from tests.conftest import WordHashEmbedder

    def bounded(name: str, max_entries: int) -> Any:
        return SemanticCache(
            tmp_path / name, embedder=WordHashEmbedder(), verifier=None,
            max_entries=max_entries, redis=RedisLink(redis_server.url),
        )  # fmt: skip

    # The second copy has room for ten: only the first one's eviction removes "alpha".
    one, two = bounded("one", 2), bounded("two", 10)
    try:
        for text in ("alpha question", "beta question", "gamma question"):
            one.put(text, text.upper())
        assert _until(lambda: len(two) == 2 and two.get("alpha question") is None)
        assert _answer(two, "gamma question") == "GAMMA QUESTION"
    finally:
        one.close()
        two.close()
