"""The core's parts are wired by constructor: an entry store and a vector index of one's own
(a Redis store, a vector-search server) drop in without touching the cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from semcache import SemanticCache
from semcache.budgets import SpendLedger, parse_budgets
from semcache.entries import DiskStore, Written
from semcache.index import FaissMaker, VectorIndex
from semcache.pricing import Price, PriceTable
from semcache.server import create_app
from semcache.settings import ServerConfig
from semcache.upstream.router import Router
from semcache.upstream.specs import passthrough
from tests.conftest import WordHashEmbedder
from tests.fake_openai import FakeOpenAI
from tests.sidecar import serving


class RecordingStore(DiskStore):
    """The embedded store, noting what the cache asks of it."""

    opened: ClassVar[list[RecordingStore]] = []

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.puts = 0
        RecordingStore.opened.append(self)

    def put_many(self, entries: Any) -> list[Written]:
        self.puts += len(entries)
        return super().put_many(entries)


class RecordingMaker(FaissMaker):
    def __init__(self) -> None:
        super().__init__()
        self.made: list[int] = []

    def __call__(self, dim: int) -> VectorIndex:
        self.made.append(dim)
        return super().__call__(dim)


def test_a_store_and_an_index_of_ones_own_are_used(tmp_path: Path) -> None:
    maker = RecordingMaker()
    with SemanticCache(
        tmp_path, embedder=WordHashEmbedder(), store=RecordingStore, index_maker=maker
    ) as cache:
        cache.put("red green blue colours", "colours")
        cache.put("alpha beta gamma letters", "letters", namespace="other")
        hit = cache.get("red green blue colours please", min_similarity=0.5)
        assert hit is not None and hit.response == "colours"
    (store,) = RecordingStore.opened
    assert store.puts == 2
    assert maker.made == [64, 64]  # one index per scope, of the embedder's dimension


async def test_the_app_takes_the_router_it_is_given(tmp_path: Path, upstream: FakeOpenAI) -> None:
    config = ServerConfig(upstream="http://127.0.0.1:9/v1", cache_dir=tmp_path / "cache")
    router = Router(passthrough(upstream.url), policy=config.routing_policy())
    cache = SemanticCache(
        config.cache_dir, config=config.cache_config(), embedder=WordHashEmbedder()
    )
    try:
        async with (
            serving(create_app(config, cache=cache, router=router)) as url,
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hello there you"}]},
                headers={"Authorization": "Bearer sk-a"},
            ) as response,
        ):
            assert response.status == 200  # through the given router, not config.upstream
        assert len(upstream.calls()) == 1
    finally:
        await router.close()  # the caller's to close
        cache.close()


async def test_the_app_takes_the_spend_ledger_it_is_given(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    config = ServerConfig(
        upstream=upstream.url,
        cache_dir=tmp_path / "cache",
        prices=PriceTable({"m": Price(1.0, 1.0)}),
    )
    budgets = parse_budgets({"daily_usd": 0.001, "on_exceeded": "reject"})
    ledger = SpendLedger(tmp_path / "shared-ledger", budgets, clock=time.time)
    cache = SemanticCache(
        config.cache_dir, config=config.cache_config(), embedder=WordHashEmbedder()
    )
    try:
        async with (
            serving(create_app(config, cache=cache, ledger=ledger)) as base,
            aiohttp.ClientSession(headers={"Authorization": "Bearer sk-a"}) as session,
        ):
            url = f"{base}/v1/chat/completions"
            statuses = []
            for text in ("first question here", "second question here"):
                body = {"model": "m", "messages": [{"role": "user", "content": text}]}
                async with session.post(url, json=body) as response:
                    statuses.append(response.status)
        # No budget in the config: the given ledger's cap refuses the second miss.
        assert statuses == [200, 429]
    finally:
        ledger.close()  # the caller's to close
        cache.close()
