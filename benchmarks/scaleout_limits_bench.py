"""Benchmark of one key pool shared by three sidecars through Redis, under a burst.

    python benchmarks/scaleout_limits_bench.py [--burst 150] [--keys 3] [--rpm 20]

A fake upstream (tests/fake_openai.py, real HTTP on 127.0.0.1) enforces ``--rpm`` requests per
minute per key as OpenAI does (a minute's bucket, refilled continuously; 429 with Retry-After
past it). Sidecars (real HTTP, one Redis on a free loopback port, queue wait raised so the
whole burst fits in it, ``redis_fallback_share`` 1/3) get the same burst of distinct requests
(no hits possible), spread over them in turn, all at once. Runs, one after the other:

1. three sidecars sharing the pool through Redis;
2. one sidecar alone with the same pool (the reference for upstream 429s);
3. three sidecars, Redis stopped for 10 s from the 5th second.

Printed per run: requests answered 200, client-visible 429s and other failures, 429s the
upstream sent, time to drain the burst. Writes benchmarks/results/scaleout_limits_bench.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcache import SemanticCache
from semcache.server import create_app
from semcache.settings import ServerConfig
from semcache.upstream.specs import parse_upstreams
from tests.conftest import WordHashEmbedder
from tests.fake_openai import FakeOpenAI
from tests.redis_server import RedisServer
from tests.sidecar import serving

RESULTS = Path(__file__).parent / "results" / "scaleout_limits_bench.txt"


async def run(
    label: str, sidecars: int, burst: int, keys: int, rpm: float, outage: bool, root: Path
) -> str:
    (root / "redis").mkdir(parents=True)
    server = RedisServer(root / "redis")
    server.start()
    fake = FakeOpenAI(rpm_per_key=rpm)
    await fake.start()
    specs = parse_upstreams(
        [{"name": "pool", "base_url": fake.url, "api_keys": [f"k{i}" for i in range(keys)],
          "rpm": rpm}], {},
    )  # fmt: skip
    statuses: list[int] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            urls = []
            for i in range(sidecars):
                config = ServerConfig(
                    upstream=fake.url, cache_dir=root / f"cache-{i}", upstreams=specs,
                    redis=server.url, redis_fallback_share=1 / 3, queue_max_wait_s=600,
                    queue_max_length=10_000, log_level="error",
                )  # fmt: skip
                cache = SemanticCache(
                    config.cache_dir, config=config.cache_config(), embedder=WordHashEmbedder()
                )
                stack.callback(cache.close)
                urls.append(
                    await stack.enter_async_context(serving(create_app(config, cache=cache)))
                )
            session = await stack.enter_async_context(aiohttp.ClientSession())

            async def one(n: int) -> None:
                text = f"Distinct request number {n}: {n * 7919 % 104729}"
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
                try:
                    async with session.post(
                        urls[n % sidecars] + "/v1/chat/completions", data=orjson.dumps(body),
                        headers={"Authorization": "Bearer sk-app",
                                 "Content-Type": "application/json"},
                    ) as response:  # fmt: skip
                        await response.read()
                        statuses.append(response.status)
                except aiohttp.ClientError:
                    statuses.append(0)

            async def kill_redis() -> None:
                await asyncio.sleep(5)
                server.stop()
                await asyncio.sleep(10)
                server.start()

            started = time.monotonic()
            await asyncio.gather(
                *(one(n) for n in range(burst)), *([kill_redis()] if outage else [])
            )
            drained = time.monotonic() - started
    finally:
        await fake.stop()
        server.stop()
    ok = statuses.count(200)
    client_429 = statuses.count(429)
    failed = len(statuses) - ok - client_429
    return (
        f"{label:<42}| {ok:>4}/{burst} answered | client 429s {client_429:>3} | other failures "
        f"{failed:>3} | upstream 429s {len(fake.refused):>3} | drained in {drained:>5.1f} s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=150)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--rpm", type=float, default=20)
    args = parser.parse_args()
    lines = [
        f"burst of {args.burst} distinct requests; pool of {args.keys} keys x {args.rpm:g} RPM"
    ]
    print(lines[0], flush=True)
    for label, sidecars, outage in (
        ("three sidecars, one Redis", 3, False),
        ("one sidecar alone", 1, False),
        ("three sidecars, Redis stopped 10 s", 3, True),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            line = await run(label, sidecars, args.burst, args.keys, args.rpm, outage, Path(tmp))
        print(line, flush=True)
        lines.append(line)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
