"""Benchmark of caches sharing entries through one Redis (``--redis``), on this machine.

    python benchmarks/scaleout_bench.py [--data ../shared/data] [--entries 2000]

A real ``redis-server`` on a free loopback port, and caches in this process with the real model
(all-MiniLM-L6-v2), each with its own directory:

1. **propagation**: a question stored through cache A, then asked through cache B until B
   hits; the time from A's store returning to B's first hit, p50/p99 over 200 questions;
2. **hit path**: a semantic hit's latency through a cache with Redis and through one without
   (the embedded default), on the same entries and queries, interleaved;
3. **Redis memory per entry**: ``used_memory`` before and after ``--entries`` stores, divided
   by the entries (each carries its answer and its 384-float vector);
4. **Redis away**: stores and lookups while Redis is stopped for 3 s, failures counted.

The questions are QQP duplicate pairs (first as stored, second as asked). Writes
benchmarks/results/scaleout_bench.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from semcache import SemanticCache
from semcache.embedding import SentenceTransformerEmbedder
from semcache.shared.link import RedisLink
from tests.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "scaleout_bench.txt"


def pairs(data: Path, count: int) -> list[tuple[str, str]]:
    found = []
    with (data / "pairs_qqp_gptcache.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            if row["duplicate"]:
                found.append((row["a"], row["b"]))
            if len(found) >= count:
                break
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args()
    questions = pairs(args.data, args.entries + 200)
    embedder = SentenceTransformerEmbedder()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "redis").mkdir()
        server = RedisServer(root / "redis")
        server.start()
        try:
            one = SemanticCache(root / "a", embedder=embedder, redis=RedisLink(server.url))
            two = SemanticCache(root / "b", embedder=embedder, redis=RedisLink(server.url))
            alone = SemanticCache(root / "alone", embedder=embedder)
            one.warm_up()
            # 1. propagation
            delays = []
            for stored, _ in questions[:200]:
                one.put(stored, {"answer": stored[::-1]})
                done = time.perf_counter()
                while two.get(stored) is None:
                    time.sleep(0.001)
                delays.append(1000 * (time.perf_counter() - done))
            say(
                f"store on A -> hit on B: p50 {statistics.median(delays):.1f} ms, "
                f"p99 {percentile(delays, 0.99):.1f} ms (200 questions; goal p99 <= 100 ms)"
            )
            # 2. hit path, with and without Redis, interleaved
            for stored, _ in questions[:200]:
                alone.put(stored, {"answer": stored[::-1]})
            with_redis, without = [], []
            for _, asked in questions[:200]:
                for cache, sink in ((two, with_redis), (alone, without)):
                    started = time.perf_counter()
                    cache.get(asked)
                    sink.append(1000 * (time.perf_counter() - started))
            say(
                f"lookup p50: {statistics.median(with_redis):.2f} ms with Redis, "
                f"{statistics.median(without):.2f} ms embedded (goal: within +2 ms)"
            )
            # 3. memory per entry
            client = redis.Redis.from_url(server.url)
            before = int(client.info("memory")["used_memory"])
            extra = questions[200 : 200 + args.entries]
            one.put_many([q for q, _ in extra], [{"answer": q[::-1]} for q, _ in extra])
            after = int(client.info("memory")["used_memory"])
            say(
                f"Redis memory: {(after - before) / max(1, len(extra)):.0f} bytes per entry "
                f"({len(extra)} entries, answers of {statistics.mean(len(q) for q, _ in extra):.0f}"
                f" characters, 384-float vectors)"
            )
            # 4. Redis away
            failures = 0
            server.stop()
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < 3:
                stored = f"{questions[n % 200][0]} (while Redis is away, {n})"
                try:
                    one.put(stored, {"answer": "x"})
                    two.get(questions[n % 200][1])
                except Exception:
                    failures += 1
                n += 1
            server.start()
            say(f"Redis stopped 3 s: {n} stores and lookups, {failures} failed")
            for cache in (one, two, alone):
                cache.close()
        finally:
            server.stop()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
