"""Load and faults against a running sidecar: many connections, stalled bodies, slow readers, an
upstream outage and its recovery.

    python benchmarks/load_fault_bench.py [--connections 500] [--seconds 30]

The fake upstream (tests/fake_openai.py), the sidecar (``semcache serve``, the real model) and
this load generator are separate processes on this machine, all on 127.0.0.1. Every phase is
bounded in count and time. Printed, and written to benchmarks/results/load_fault_bench.txt:
errors (any status >= 500 other than the 503 an outage must give, and any connection failure),
p50/p99 latency, and the sidecar's RSS and open descriptors before, at the peak of each phase and
after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from sidecar_bench import free_port, wait_healthy  # noqa: E402

RESULTS = HERE / "results" / "load_fault_bench.txt"
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


class Process:
    def __init__(self, command: list[str], health: str) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_healthy(health, self.popen)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.popen.pid}/fd"))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.popen.send_signal(sig)
        self.popen.wait(timeout=30)


def upstream(port: int) -> Process:
    command = [sys.executable, "-m", "tests.fake_openai", str(port), "20"]
    return Process(command, f"http://127.0.0.1:{port}/v1/models")


def body(text: str, stream: bool = False) -> bytes:
    import orjson

    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "stream": stream}
    )


HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


def summary(name: str, latencies: list[float], statuses: Counter[object], sidecar: Process) -> None:
    errors = sum(n for s, n in statuses.items() if not isinstance(s, int) or s >= 500)
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    say(
        f"{name:<28} requests {sum(statuses.values()):>6}  errors {errors:>4}  "
        f"p50 {np.percentile(lat, 50):7.1f} ms  p99 {np.percentile(lat, 99):7.1f} ms  "
        f"RSS {sidecar.rss_mb():6.0f} MB  fds {sidecar.fds():>5}  statuses {dict(statuses)}"
    )


async def connections(url: str, count: int, seconds: float, sidecar: Process) -> None:
    """``count`` connections each sending requests back to back for ``seconds``: a mix of
    repeated questions (hits) and new ones (misses)."""
    latencies: list[float] = []
    statuses: Counter[object] = Counter()
    peak_rss, peak_fds = 0.0, 0
    deadline = time.monotonic() + seconds
    topics = [f"topic {i}" for i in range(200)]

    async def one(session: aiohttp.ClientSession, worker: int) -> None:
        rng = random.Random(worker)
        while time.monotonic() < deadline:
            text = f"What should I know about {rng.choice(topics)}?"
            if rng.random() < 0.3:
                text = f"Tell me something new, number {rng.randrange(10**9)} please"
            started = time.monotonic()
            try:
                async with session.post(url, data=body(text), headers=HEADERS) as response:
                    await response.read()
                    statuses[response.status] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(time.monotonic() - started)

    async def watch() -> None:
        nonlocal peak_rss, peak_fds
        while time.monotonic() < deadline:
            peak_rss, peak_fds = max(peak_rss, sidecar.rss_mb()), max(peak_fds, sidecar.fds())
            await asyncio.sleep(0.5)

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(watch(), *(one(session, w) for w in range(count)))
    say(f"  peak during {count} connections: RSS {peak_rss:.0f} MB, fds {peak_fds}")
    summary(f"{count} connections, {seconds:g} s", latencies, statuses, sidecar)


async def stalled_bodies(port: int, count: int, sidecar: Process, timeout_s: float) -> None:
    """``count`` clients declare a 1 MB body, send 10 bytes and stall; one legitimate request
    is timed meanwhile; then the sidecar must have let them all go."""
    writers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"model":'
        )
        await writer.drain()
        writers.append((reader, writer))
    await asyncio.sleep(1)
    say(f"  peak with {count} stalled bodies: RSS {sidecar.rss_mb():.0f} MB, fds {sidecar.fds()}")
    statuses: Counter[object] = Counter()
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body("What is the capital of France?"),
            headers=HEADERS,
        ) as response:
            await response.read()
            statuses[response.status] += 1
        latencies.append(time.monotonic() - started)
    answers: Counter[object] = Counter()
    for reader, _ in writers:
        try:
            head = await asyncio.wait_for(reader.read(12), timeout_s + 10)
            answers[head[9:12].decode() or "closed"] += 1
        except TimeoutError:
            answers["no answer"] += 1
    for _, writer in writers:
        writer.close()
    await asyncio.sleep(1)
    say(f"  the stalled clients got: {dict(answers)}")
    summary(f"request beside {count} stalled", latencies, statuses, sidecar)


async def slow_readers(url: str, count: int, sidecar: Process) -> None:
    """``count`` streamed requests whose clients read one byte a second, then leave."""
    statuses: Counter[object] = Counter()

    async def one(worker: int) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url,
                data=body(f"Tell me a long story number {worker}", stream=True),
                headers=HEADERS,
            ) as response,
        ):
            statuses[response.status] += 1
            for _ in range(3):
                await response.content.read(1)
                await asyncio.sleep(1)

    await asyncio.gather(*(one(w) for w in range(count)), return_exceptions=True)
    await asyncio.sleep(1)
    summary(f"{count} slow readers", [], statuses, sidecar)


async def outage(url: str, up_port: int, sidecar: Process, reset_s: float) -> Process:
    """The upstream dies: requests must fail fast (503 once the breaker is open), then the
    sidecar must recover by itself once the upstream is back."""
    statuses: Counter[object] = Counter()
    latencies: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for i in range(40):
            started = time.monotonic()
            async with session.post(url, data=body(f"outage question {i}"), headers=HEADERS) as r:
                await r.read()
                statuses[r.status] += 1
            latencies.append(time.monotonic() - started)
        lat = np.array(latencies) * 1000
        say(
            f"upstream down: 40 requests  statuses {dict(statuses)}  "
            f"p50 {np.percentile(lat, 50):.1f} ms  p99 {np.percentile(lat, 99):.1f} ms"
        )
        back = upstream(up_port)
        restarted = time.monotonic()
        recovered = None
        while time.monotonic() - restarted < reset_s + 30:
            async with session.post(url, data=body("are you back?"), headers=HEADERS) as r:
                await r.read()
                if r.status == 200:
                    recovered = time.monotonic() - restarted
                    break
            await asyncio.sleep(0.2)
        say(
            f"upstream back: first success after {recovered:.1f} s (breaker_reset_s {reset_s:g})"
            if recovered is not None
            else "upstream back: no success within the wait"
        )
    return back


async def main_async(args: argparse.Namespace) -> None:
    up_port, port = free_port(), free_port()
    fake = upstream(up_port)
    with tempfile.TemporaryDirectory() as cache_dir:
        command = [
            sys.executable, "-m", "semcache", "serve", "--port", str(port),
            "--upstream", f"http://127.0.0.1:{up_port}/v1", "--cache-dir", cache_dir,
            "--log-level", "error", "--body-read-timeout-s", str(args.body_timeout_s),
            "--breaker-reset-s", str(args.reset_s), "--breaker-failures", "3",
            "--max-retries", "1", "--retry-backoff-s", "0.05",
        ]  # fmt: skip
        sidecar = Process(command, f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            say(f"before: RSS {sidecar.rss_mb():.0f} MB, fds {sidecar.fds()}")
            await connections(url, args.connections, args.seconds, sidecar)
            say(f"after the load: RSS {sidecar.rss_mb():.0f} MB, fds {sidecar.fds()}")
            await stalled_bodies(port, args.stalled, sidecar, args.body_timeout_s)
            await slow_readers(url, 50, sidecar)
            fake.stop(signal.SIGKILL)
            fake = await outage(url, up_port, sidecar, args.reset_s)
            await asyncio.sleep(2)
            say(f"after everything: RSS {sidecar.rss_mb():.0f} MB, fds {sidecar.fds()}")
        finally:
            sidecar.stop()
            fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--stalled", type=int, default=200)
    parser.add_argument("--body-timeout-s", type=float, default=5)
    parser.add_argument("--reset-s", type=float, default=5)
    args = parser.parse_args()
    say(
        f"load and faults: {args.connections} connections for {args.seconds:g} s, "
        f"{args.stalled} stalled bodies (timeout {args.body_timeout_s:g} s), 50 slow readers, "
        f"an upstream outage (breaker reset {args.reset_s:g} s)"
    )
    asyncio.run(main_async(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
