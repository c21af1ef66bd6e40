"""Benchmark of the sidecar over HTTP, against a fake upstream with a fixed latency.

    python benchmarks/sidecar_bench.py [--data ../shared/data] [--upstream-ms 50]

The fake upstream, the sidecar and this load generator are three processes on this machine
(2 cores between them, so the figures are a floor). Printed, and written to
benchmarks/results/sidecar_bench.txt:

1. the embedding backend's raw batched throughput on the hit prompts: the ceiling of the hit
   path;
2. the hit path at concurrency 1, 16 and 64: p50, p99, hits/s, and hits/s as a share of that
   ceiling; with micro-batching on (3 ms) and off;
3. the miss path against calling the fake upstream directly at concurrency 1 and 64: the
   latency the sidecar adds, and the mean time of each pipeline stage.

The hit path is measured on semantic hits only: the cache is filled (through the sidecar, as
misses) with every `a` of GPTCache's paraphrase pairs and of QQP's duplicate pairs, and only the
`b`s that the library answers from its semantic tier are asked, each once, so nothing is
answered by the exact tier or from the memo of recent vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "sidecar_bench.txt"
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def running(command: list[str], health_url: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(health_url, process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def fake_upstream(delay_ms: float) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "tests.fake_openai", str(port), str(delay_ms)]
    with running(command, f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}/v1"


@contextmanager
def sidecar(upstream: str, lookup_batch_wait_ms: float) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as cache_dir:
        command = [
            sys.executable, "-m", "semcache", "serve", "--port", str(port), "--upstream", upstream,
            "--cache-dir", cache_dir, "--lookup-batch-wait-ms", str(lookup_batch_wait_ms),
            "--log-level", "warning",
        ]  # fmt: skip
        with running(command, f"http://127.0.0.1:{port}/healthz"):
            yield f"http://127.0.0.1:{port}/v1"


def body(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


async def load(
    base_url: str, prompts: Sequence[str], concurrency: int
) -> tuple[list[float], list[str], float]:
    """Send every prompt with ``concurrency`` in flight; latencies, X-Semcache values, seconds."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    latencies: list[float] = []
    outcomes: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                prompt = queue.get_nowait()
                started = time.perf_counter()
                async with session.post(
                    base_url + "/chat/completions",
                    json=body(prompt),
                    headers={"Authorization": "Bearer sk-bench"},
                ) as response:
                    await response.read()
                    latencies.append(time.perf_counter() - started)
                    outcomes.append(response.headers.get("X-Semcache", "direct"))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, outcomes, time.perf_counter() - started


def summary(latencies: Sequence[float]) -> tuple[float, float]:
    ms = np.array(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def backend_ceiling(texts: Sequence[str]) -> tuple[float, float]:
    """The embedding backend's raw batched throughput on ``texts`` (texts/s), as the sidecar
    runs it (the default backend and threads): batches of 32 from one thread, and from one
    thread per core at once. The higher of the two is the ceiling of the hit path."""
    import threading

    from semcache.embedding import make_embedder

    model = make_embedder()
    model.embed(texts[:64])

    def run(part: Sequence[str]) -> None:
        for i in range(0, len(part), 32):
            model.embed(part[i : i + 32])

    started = time.perf_counter()
    run(texts)
    one = len(texts) / (time.perf_counter() - started)
    cores = os.cpu_count() or 1
    threads = [threading.Thread(target=run, args=(texts[k::cores],)) for k in range(cores)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return one, len(texts) / (time.perf_counter() - started)


def semantic_hits(stored: Sequence[str], asked: Sequence[str]) -> list[str]:
    """The asked prompts that the cache answers from its semantic tier when every stored one
    is in it (decided by the library with the sidecar's defaults)."""
    from semcache import CacheRequest, SemanticCache
    from semcache.policy import Reason

    with tempfile.TemporaryDirectory() as folder, SemanticCache(folder) as cache:
        cache.put_many(list(stored), ["x"] * len(stored))
        decisions = cache.lookup_many([CacheRequest(prompt=p) for p in asked])
    return [p for p, d in zip(asked, decisions, strict=True) if d.reason is Reason.SEMANTIC]


def stage_totals(base_url: str) -> dict[str, tuple[float, float]]:
    """Seconds spent in each pipeline stage and the requests that ran it, from /metrics."""
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("semcache_stage_duration_seconds_sum"):
            stage = line.split('stage="')[1].split('"')[0]
            sums[stage] = float(line.split()[-1])
        elif line.startswith("semcache_stage_duration_seconds_count"):
            stage = line.split('stage="')[1].split('"')[0]
            counts[stage] = float(line.split()[-1])
    return {k: (sums[k], counts.get(k, 0.0)) for k in sums}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--upstream-ms", type=float, default=50.0)
    args = parser.parse_args()
    pairs = [json.loads(line) for line in (args.data / "pairs_gptcache_mock.jsonl").open()]
    with (args.data / "pairs_qqp_gptcache.jsonl").open() as file:
        qqp = [json.loads(line) for _, line in zip(range(4000), file, strict=False)]
    pairs += [row for row in qqp if row["duplicate"]]
    stored = list(dict.fromkeys(p["a"] for p in pairs))
    hits = semantic_hits(stored, list(dict.fromkeys(p["b"] for p in pairs if p["b"] != p["a"])))
    banking = (args.data / "clusters_banking77.jsonl").read_text().splitlines()
    novel = [json.loads(line)["text"] for line in banking]
    say(
        f"# semcache sidecar benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"fake upstream answering in {args.upstream_ms:.0f} ms"
    )
    one, parallel = backend_ceiling(hits)
    ceiling = max(one, parallel)
    say(
        f"backend ceiling on the hit prompts: {one:.0f} texts/s in batches of 32 on one thread, "
        f"{parallel:.0f} with one call per core at once"
    )
    say(f"{len(stored)} prompts stored, {len(hits)} distinct paraphrases that hit semantically")
    say()
    levels = (1, 16, 64)
    sizes = {1: 100, 16: 300}
    with fake_upstream(args.upstream_ms) as upstream:
        say(
            f"{'path':<26} | {'conc':>4} | {'n':>5} | {'p50 ms':>8} | {'p99 ms':>8} | "
            f"{'req/s':>7} | {'of ceiling':>10}"
        )
        say("-" * 86)
        for wait_ms, label in (
            (3.0, "semantic hit, batching 3ms"),
            (0.0, "semantic hit, no batch"),
        ):
            with sidecar(upstream, wait_ms) as url:
                asyncio.run(load(url, stored, 16))  # fill: every stored prompt once, a miss
                offset = 0
                for concurrency in levels:
                    count = sizes.get(concurrency, len(hits) - offset)
                    prompts = hits[offset : offset + count]  # each asked once: no exact tier
                    offset += count
                    latencies, outcomes, seconds = asyncio.run(load(url, prompts, concurrency))
                    served = [lat for lat, o in zip(latencies, outcomes, strict=True) if o == "hit"]
                    p50, p99 = summary(served)
                    rate = len(served) / seconds
                    say(
                        f"{label:<26} | {concurrency:>4} | {len(served):>5} | {p50:>8.1f} | "
                        f"{p99:>8.1f} | {rate:>7.0f} | {rate / ceiling:>9.0%}"
                    )
        say()
        offset = 0
        with sidecar(upstream, 3.0) as url:
            asyncio.run(load(url, stored[:200], 16))  # a scope with entries: misses embed
            before = stage_totals(url)
            for concurrency in (1, 64):
                count = 100 if concurrency == 1 else 640
                prompts = [
                    f"{novel[(offset + i) % len(novel)]} [{offset + i}]" for i in range(count)
                ]
                offset += count
                direct, _, direct_s = asyncio.run(load(upstream, prompts, concurrency))
                latencies, outcomes, seconds = asyncio.run(load(url, prompts, concurrency))
                misses = [lat for lat, o in zip(latencies, outcomes, strict=True) if o == "miss"]
                d50, d99 = summary(direct)
                m50, m99 = summary(misses)
                say(
                    f"{'upstream direct':<26} | {concurrency:>4} | {len(direct):>5} | "
                    f"{d50:>8.1f} | {d99:>8.1f} | {len(prompts) / direct_s:>7.0f} |"
                )
                say(
                    f"{'miss through sidecar':<26} | {concurrency:>4} | {len(misses):>5} | "
                    f"{m50:>8.1f} | {m99:>8.1f} | {len(prompts) / seconds:>7.0f} | "
                    f"+{m50 - d50:.1f} p50, +{m99 - d99:.1f} p99"
                )
            after = stage_totals(url)
        say()
        means = {}
        for stage, (seconds, count) in after.items():
            seconds_before, count_before = before.get(stage, (0.0, 0.0))
            if count > count_before:
                means[stage] = 1000 * (seconds - seconds_before) / (count - count_before)
        say("miss path, mean ms per request in each stage over both miss runs (send and relay")
        say("include the upstream's own time; store runs after the response):")
        say(", ".join(f"{stage} {ms:.2f}" for stage, ms in means.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
