"""Benchmark of the sidecar over HTTP, against a fake upstream with a fixed latency.

    python benchmarks/sidecar_bench.py [--data ../shared/data] [--upstream-ms 50]

The fake upstream, the sidecar and this load generator are three processes on this machine
(2 cores between them, so the figures are a floor). Printed, and written to
benchmarks/results/sidecar_bench.txt:

1. the model's raw batched-embedding throughput: the ceiling of the hit path;
2. the hit path at concurrency 1, 16 and 64: p50, p99, requests/s, and requests/s as a share of
   that ceiling; with micro-batching on (3 ms) and off;
3. the miss path against calling the fake upstream directly at the same concurrency: the
   latency the sidecar adds.

Queries are GPTCache's paraphrase pairs: the cache is filled with every `a` (through the
sidecar, as misses), then the `b`s are asked; only responses marked `X-Semcache: hit` count
towards the hit-path figures.
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
def running(command: list[str], health_url: str) -> Iterator[None]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(health_url, process)
        yield
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


def model_ceiling(texts: Sequence[str]) -> float:
    from semcache import SentenceTransformerEmbedder

    model = SentenceTransformerEmbedder()
    model.embed(texts[:64])
    started = time.perf_counter()
    model.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--upstream-ms", type=float, default=50.0)
    args = parser.parse_args()
    pairs = [json.loads(line) for line in (args.data / "pairs_gptcache_mock.jsonl").open()]
    stored = [p["a"] for p in pairs]
    asked = [p["b"] for p in pairs]
    banking = (args.data / "clusters_banking77.jsonl").read_text().splitlines()
    novel = [json.loads(line)["text"] for line in banking]
    say(
        f"# semcache sidecar benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"fake upstream answering in {args.upstream_ms:.0f} ms"
    )
    ceiling = model_ceiling(asked[:512])
    say(f"model ceiling: {ceiling:.0f} embeddings/s batched (all-MiniLM-L6-v2, this machine)")
    say()
    levels = (1, 16, 64)
    with fake_upstream(args.upstream_ms) as upstream:
        say(
            f"{'path':<26} | {'conc':>4} | {'n':>5} | {'p50 ms':>8} | {'p99 ms':>8} | "
            f"{'req/s':>7} | {'of ceiling':>10}"
        )
        say("-" * 86)
        for wait_ms, label in ((3.0, "hit, batching 3 ms"), (0.0, "hit, batching off")):
            with sidecar(upstream, wait_ms) as url:
                asyncio.run(load(url, stored, 16))  # fill: every `a` once, as a miss
                offset = 0
                for concurrency in levels:
                    count = 100 if concurrency == 1 else 400
                    prompts = [asked[(offset + i) % len(asked)] for i in range(count)]
                    offset += count
                    latencies, outcomes, seconds = asyncio.run(load(url, prompts, concurrency))
                    hits = [lat for lat, o in zip(latencies, outcomes, strict=True) if o == "hit"]
                    p50, p99 = summary(hits)
                    rate = len(prompts) / seconds
                    say(
                        f"{label:<26} | {concurrency:>4} | {len(hits):>5} | {p50:>8.1f} | "
                        f"{p99:>8.1f} | {rate:>7.0f} | {rate / ceiling:>9.0%}"
                    )
        say()
        offset = 0
        with sidecar(upstream, 3.0) as url:
            for concurrency in levels:
                count = 60 if concurrency == 1 else 320
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
                    f"+{m50 - d50:.1f} ms p50"
                )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
