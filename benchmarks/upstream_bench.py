"""Key pools under rate limits: a burst of distinct requests against three limited keys.

    python benchmarks/upstream_bench.py [--keys 3] [--rpm 40] [--burst 300]

A fake upstream (tests/fake_openai.py, real HTTP on 127.0.0.1) enforces ``--rpm`` requests per
minute per key the way OpenAI does (a bucket of a minute's requests, refilled continuously) and
answers 429 with Retry-After past it. The same burst of distinct requests (no cache hits
possible) is sent, in one run:

- through the sidecar, whose pool holds the three keys with their limits, queue wait raised so
  that the whole burst fits in it;
- by a naive client straight to the upstream: all requests at once, keys in turn, each retried
  twice on 429 after Retry-After, as the openai SDK does by default.

Printed: requests that succeeded, client-visible 429s, 429s the upstream sent, time to drain
the burst, and throughput against the keys' combined steady limit (keys x rpm per minute) and
against everything the upstream would have accepted in that time (full buckets + refill).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcache import SemanticCache
from semcache.server import create_app
from semcache.settings import ServerConfig
from semcache.upstream.specs import parse_upstreams
from tests.conftest import WordHashEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI

RESULTS = Path(__file__).resolve().parent / "results" / "upstream_bench.txt"
NO_CACHE = {"Cache-Control": "no-cache, no-store", "Content-Type": "application/json"}


def body(i: int) -> bytes:
    text = f"Request {i}: summarise item {i} of the burst."
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})


async def through_sidecar(args: argparse.Namespace, fake: FakeOpenAI) -> dict[str, Any]:
    keys = [f"sk-bench-{k}" for k in range(args.keys)]
    upstreams = parse_upstreams(
        [{"name": "limited", "base_url": fake.url, "api_keys": keys, "rpm": args.rpm}], {}
    )
    with tempfile.TemporaryDirectory() as directory:
        config = ServerConfig(
            upstream=fake.url,
            cache_dir=Path(directory),
            upstreams=upstreams,
            queue_max_wait_s=3600.0,
            queue_max_length=100_000,
        )
        cache = SemanticCache(directory, embedder=WordHashEmbedder())
        runner = web.AppRunner(create_app(config, cache=cache))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
            ) as session:

                async def one(i: int) -> tuple[int, float]:
                    headers = {**NO_CACHE, "Authorization": "Bearer sk-app"}
                    async with session.post(url, data=body(i), headers=headers) as response:
                        await response.read()
                        return response.status, time.monotonic()

                started = time.monotonic()
                results = await asyncio.gather(*(one(i) for i in range(args.burst)))
        finally:
            await runner.cleanup()
            cache.close()
    return summarise(args, fake, results, started)


async def naive(args: argparse.Namespace, fake: FakeOpenAI) -> dict[str, Any]:
    keys = itertools.cycle([f"sk-naive-{k}" for k in range(args.keys)])
    url = fake.url + "/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int, key: str) -> tuple[int, float]:
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            for attempt in range(3):  # the first try and two retries
                async with session.post(url, data=body(i), headers=headers) as response:
                    await response.read()
                    if response.status != 429 or attempt == 2:
                        return response.status, time.monotonic()
                    wait = float(response.headers.get("retry-after", "1"))
                await asyncio.sleep(min(wait, 60.0))
            raise AssertionError("unreachable")

        started = time.monotonic()
        results = await asyncio.gather(*(one(i, next(keys)) for i in range(args.burst)))
    return summarise(args, fake, results, started)


def summarise(
    args: argparse.Namespace,
    fake: FakeOpenAI,
    results: list[tuple[int, float]],
    started: float,
) -> dict[str, Any]:
    ok = [t for status, t in results if status == 200]
    elapsed = (max(ok) if ok else time.monotonic()) - started
    steady = args.keys * args.rpm / 60  # requests per second the keys sustain
    possible = args.keys * args.rpm + steady * elapsed  # full buckets at the start + refill
    return {
        "succeeded": len(ok),
        "client_429": sum(status == 429 for status, _ in results),
        "other_errors": sum(status not in (200, 429) for status, _ in results),
        "upstream_429": len(fake.refused),
        "seconds": elapsed,
        "per_minute": 60 * len(ok) / elapsed if elapsed else 0.0,
        "of_steady_limit": len(ok) / elapsed / steady if elapsed else 0.0,
        "of_possible": len(ok) / possible,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--rpm", type=float, default=40)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=50)
    args = parser.parse_args()
    rows = {}
    for name, run in (("semcache sidecar", through_sidecar), ("naive client", naive)):
        fake = FakeOpenAI(rpm_per_key=args.rpm, default=Behaviour(delay_s=args.latency_ms / 1000))
        await fake.start()
        try:
            rows[name] = await run(args, fake)
        finally:
            await fake.stop()
    lines = [
        f"{args.burst} distinct requests at once; {args.keys} keys x {args.rpm:g} RPM "
        f"(combined steady limit {args.keys * args.rpm:g}/min), upstream latency "
        f"{args.latency_ms:g} ms",
        "",
        f"{'client':<18} | {'ok':>5} | {'client 429':>10} | {'other err':>9} | "
        f"{'upstream 429':>12} | {'seconds':>7} | {'req/min':>7} | {'of steady':>9} | "
        f"{'of possible':>11}",
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<18} | {r['succeeded']:>5} | {r['client_429']:>10} | "
            f"{r['other_errors']:>9} | {r['upstream_429']:>12} | {r['seconds']:>7.1f} | "
            f"{r['per_minute']:>7.1f} | {r['of_steady_limit']:>9.1%} | {r['of_possible']:>11.1%}"
        )
    lines += [
        "",
        "of steady: requests per minute over the run / (keys x rpm). of possible: requests /",
        "(full buckets at the start + refill over the run), what the upstream would have taken.",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
