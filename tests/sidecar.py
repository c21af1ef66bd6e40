"""The sidecar under test: started on 127.0.0.1 over a fake upstream, with the helpers the
server tests share (fixtures ``upstream`` and ``sidecar`` are in conftest.py)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from semcache import SemanticCache
from semcache.embedding import Embedder
from semcache.server import create_app
from semcache.server.state import STATE
from semcache.settings import ServerConfig
from tests.fake_openai import FakeOpenAI

MODEL = "gpt-4o-mini"


class Sidecar:
    def __init__(
        self, url: str, app: web.Application, cache: SemanticCache, upstream: FakeOpenAI
    ) -> None:
        self.url = url
        self.app = app
        self.cache = cache
        self.upstream = upstream
        self.clients: list[openai.AsyncOpenAI] = []

    def client(self, api_key: str = "sk-tenant-one", **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kwargs
        )

    async def post(
        self, path: str, data: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url + path,
                # aiohttp warns of raw bytes over 1 MiB (they are written in one go)
                data=io.BytesIO(data) if len(data) > 2**20 else data,
                headers={
                    "Authorization": "Bearer sk-raw",
                    "Content-Type": "application/json",
                    **(headers or {}),
                },
            ) as response,
        ):
            result = response.status, await response.json(content_type=None), dict(response.headers)
        await self.settled()
        return result

    async def settled(self) -> None:
        """Wait for the answers stored after their responses (what a test then inspects)."""
        await self.app[STATE].after_response.drain()

    async def post_stream(
        self, path: str, data: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, str, dict[str, str]]:
        """A streamed request, read to its end: status, the raw event text, headers."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url + path,
                data=data,
                headers={"Authorization": "Bearer sk-raw", **(headers or {})},
            ) as response,
        ):
            result = response.status, await response.text(), dict(response.headers)
        await self.settled()
        return result

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            return await response.json(content_type=None)

    async def get_json(self, path: str, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        """A GET with exactly ``headers``: status, JSON body, headers."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, headers=headers) as response,
        ):
            return response.status, await response.json(content_type=None), dict(response.headers)

    async def get_text(self, path: str) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            return await response.text()

    async def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample on ``/metrics`` (``None``: not there)."""
        return metric_value(await self.get_text("/metrics"), name, **labels)


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` in a Prometheus text exposition."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free port of 127.0.0.1 for the ``with`` block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def start_sidecar(
    tmp_path: Path, embedder: Embedder, upstream: FakeOpenAI, **settings: Any
) -> AsyncIterator[Sidecar]:
    # Health checks would add GET /v1/models calls to what the fake records; tests of them
    # turn them on.
    settings.setdefault("health_check_interval_s", 0)
    config = ServerConfig(upstream=upstream.url, cache_dir=tmp_path / "cache", **settings)
    cache = SemanticCache(config.cache_dir, config=config.cache_config(), embedder=embedder)
    app = create_app(config, cache=cache)
    try:
        async with serving(app) as url:
            running = Sidecar(url, app, cache, upstream)
            try:
                yield running
            finally:
                for client in running.clients:
                    await client.close()
    finally:
        cache.close()


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}
