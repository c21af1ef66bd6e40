"""What a new user meets in the first hour: error answers that say what semcache did, the
library's documented switches, the admin API, budgets that keep the cache working, and the
upstream connection given back before the cache is written."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from semcache import SemanticCache, SentenceTransformerEmbedder
from semcache.budgets import parse_budgets
from semcache.errors import ConfigError
from semcache.keys import CacheRequest
from semcache.pricing import Price, PriceTable
from semcache.server.state import STATE
from tests.conftest import WordHashEmbedder
from tests.fake_openai import FakeOpenAI
from tests.sidecar import MODEL, Sidecar, ask, serving, start_sidecar

ADMIN = {"Authorization": "Bearer s3cret"}


def _body(text: str) -> bytes:
    return orjson.dumps(ask(text))


# -- 4. every answer carries X-Semcache ------------------------------------------------------


async def test_400_429_and_502_answers_say_what_semcache_did(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    budgets = {
        "budgets": parse_budgets({"daily_usd": 0.001, "on_exceeded": "reject"}),
        "prices": PriceTable({MODEL: Price(1.0, 1.0)}),
    }
    async with start_sidecar(tmp_path / "a", WordHashEmbedder(), upstream, **budgets) as sidecar:
        status, _, headers = await sidecar.post("/v1/chat/completions", b"{not json")
        assert status == 400 and headers["X-Semcache"] == "error"
        await sidecar.post("/v1/chat/completions", _body("first question spends the budget"))
        status, _, headers = await sidecar.post("/v1/chat/completions", _body("a new question"))
        assert status == 429 and headers["X-Semcache"] == "error"
    await upstream.stop()
    async with start_sidecar(
        tmp_path / "b", WordHashEmbedder(), upstream, max_retries=0
    ) as sidecar:
        status, _, headers = await sidecar.post("/v1/chat/completions", _body("anyone there?"))
        assert status == 502 and headers["X-Semcache"] == "error"


# -- 6. the library's documented way to run without a verifier --------------------------------


def test_verifier_none_turns_the_verifier_off(
    tmp_path: Path, model: SentenceTransformerEmbedder
) -> None:
    with SemanticCache(tmp_path / "default", embedder=model) as cache:
        assert cache.verifier is not None  # the project's verifier, trained for this model
    for off in (None, "none"):
        with SemanticCache(tmp_path / str(off), embedder=model, verifier=off) as cache:
            assert cache.verifier is None
            cache.put("What is the capital of France?", "Paris")
            hit = cache.get("What's the capital city of France?")
            assert hit is not None and hit.confidence is None
    with pytest.raises(ConfigError, match="verifier"):
        SemanticCache(tmp_path / "bad", embedder=model, verifier=42)  # type: ignore[arg-type]


# -- 7. the admin API: entries marked wrong, pages of entries, namespaces ---------------------


async def test_the_admin_api_lists_entries_namespaces_and_audits_wrong_ones(
    sidecar: Sidecar,
) -> None:
    client = sidecar.client()
    first = await client.chat.completions.with_raw_response.create(**ask("What is a quark?"))
    namespace = first.headers["X-Semcache-Namespace"]
    for text in ("What is a lepton?", "What is a boson?"):
        await client.chat.completions.create(**ask(text))
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        base = sidecar.url + "/admin"
        async with session.get(f"{base}/namespaces") as listed:
            assert (await listed.json())["data"] == [{"namespace": namespace, "entries": 3}]
        async with session.get(f"{base}/entries", params={"limit": "2"}) as page:
            one = await page.json()
        assert len(one["data"]) == 2 and one["has_more"] is True
        async with session.get(
            f"{base}/entries", params={"after": str(one["next_after"]), "namespace": namespace}
        ) as page:
            two = await page.json()
        assert [e["prompt"] for e in two["data"]] == ["What is a boson?"]
        assert two["has_more"] is False
        entry_id = one["data"][0]["id"]
        async with session.post(f"{base}/entries/{entry_id}/wrong") as marked:
            assert marked.status == 200
        async with session.get(f"{base}/entries/{entry_id}") as audited:
            assert audited.status == 200
            shown = await audited.json()
        assert shown["marked_wrong"] is True and shown["prompt"] == "What is a quark?"
        async with session.get(f"{base}/entries", params={"marked_wrong": "true"}) as page:
            assert [e["id"] for e in (await page.json())["data"]] == [entry_id]
        async with session.get(f"{base}/entries", params={"limit": "0"}) as page:
            assert page.status == 400


# -- 9. a downgraded tenant still gets hits --------------------------------------------------


async def test_a_downgraded_request_is_looked_up_where_it_is_stored(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    budgets = {
        "budgets": parse_budgets(
            {"tenant_daily_usd": 0.015, "on_exceeded": "downgrade", "downgrade_model": "cheap"}
        ),
        "prices": PriceTable({MODEL: Price(1.0, 1.0), "cheap": Price(0.001, 0.001)}),
    }
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream, **budgets) as sidecar:
        assert (await sidecar.post("/v1/chat/completions", _body("spend the budget")))[0] == 200
        seen = []
        for _ in range(3):
            status, _, headers = await sidecar.post(
                "/v1/chat/completions", _body("the same question three times")
            )
            assert status == 200 and headers["X-Semcache-Budget"] == "downgraded to cheap"
            seen.append(headers["X-Semcache"])
        assert seen == ["miss", "hit", "hit"]
        # An answer stored for the model asked for is still served: it costs nothing.
        status, _, headers = await sidecar.post("/v1/chat/completions", _body("spend the budget"))
        assert headers["X-Semcache"] == "hit"
    assert [r.body["model"] for r in upstream.calls()] == [MODEL, "cheap"]


# -- 10. the upstream is released and billed before the cache is written ---------------------


class SlowToStore(SemanticCache):
    """A cache whose writes wait for a gate."""

    gate: threading.Event

    async def astore(self, request: CacheRequest, response: Any, **options: Any) -> int:
        await asyncio.to_thread(self.gate.wait, 30)
        return await super().astore(request, response, **options)


async def test_the_upstream_is_released_billed_and_answered_before_the_cache_is_written(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    from semcache.server import create_app
    from semcache.settings import ServerConfig

    config = ServerConfig(upstream=upstream.url, cache_dir=tmp_path / "cache")
    cache = SlowToStore(config.cache_dir, config=config.cache_config(), embedder=WordHashEmbedder())
    cache.gate = threading.Event()
    app = create_app(config, cache=cache)
    try:
        async with serving(app) as url, aiohttp.ClientSession() as session:
            response = await asyncio.wait_for(
                session.post(
                    url + "/v1/chat/completions",
                    data=_body("bill me before you store me"),
                    headers={"Authorization": "Bearer sk-a", "Content-Type": "application/json"},
                ),
                timeout=10,
            )
            assert response.status == 200  # answered while the store waits at its gate
            response.release()
            assert _billed(app[STATE].metrics) > 0 and len(cache) == 0
            assert len(app[STATE].after_response) == 1
            cache.gate.set()
            await app[STATE].after_response.drain()
            assert len(cache) == 1
    finally:
        cache.gate.set()
        cache.close()


def _billed(metrics: Any) -> float:
    text = metrics.render().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("semcache_upstream_tokens_total")
    )
