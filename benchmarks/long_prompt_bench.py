"""Benchmark of prompts of megabytes: what one costs its own request, and what it costs the
requests served beside it.

    python benchmarks/long_prompt_bench.py [--data ../shared/data]

A sidecar over a fake upstream (answering in 5 ms) on this machine. For each long request (a
prompt of 0.5 MB and of 3 MB, a chat of 20,000 short messages), sent first as a miss, then
again (an exact hit): its own time, and the latency of small exact-hit requests sent one after
another meanwhile (p50, p99, max): a step that holds the event loop or the interpreter shows
there. Then, in this process, the memory the guards' and the verifier's memos hold after
reading 300 distinct pairs of 20,000-character prompts.

Writes benchmarks/results/long_prompt_bench.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from sidecar_bench import fake_upstream, sidecar

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "long_prompt_bench.txt"
SMALL = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello, tiny one"}]}


def words_of(data: Path) -> list[str]:
    text = (data / "pairs_qqp_gptcache.jsonl").read_text()
    return [w for w in text.split() if w.isalpha()]


def long_bodies(words: list[str]) -> dict[str, dict[str, Any]]:
    rng = random.Random(5)

    def prose(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    chat = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": prose(8)} for i in range(20_000)
    ]
    chat.append({"role": "user", "content": "And what did we say about the last one?"})

    def asking(text: str) -> dict[str, Any]:
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}

    return {
        "prompt of 0.5 MB": asking(prose(80_000)),
        "prompt of 3 MB": asking(prose(480_000)),
        "chat of 20,000 messages": {"model": "gpt-4o-mini", "messages": chat},
    }


async def beside(base_url: str, body: bytes, key: str) -> tuple[float, list[float]]:
    """Send ``body`` while small exact hits go one after another; its seconds and theirs."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    small = orjson.dumps(SMALL)
    latencies: list[float] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        async with session.post(base_url + "/chat/completions", data=small, headers=headers) as r:
            await r.read()  # stored: the small ones are exact hits from now on

        async def smalls() -> None:
            while not done.is_set():
                started = time.perf_counter()
                async with session.post(
                    base_url + "/chat/completions", data=small, headers=headers
                ) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)

        task = asyncio.create_task(smalls())
        await asyncio.sleep(0.3)
        latencies.clear()
        started = time.perf_counter()
        async with session.post(base_url + "/chat/completions", data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"the long request got {r.status}")
        seconds = time.perf_counter() - started
        await asyncio.sleep(0.3)
        done.set()
        await task
    return seconds, latencies


def memo_memory(words: list[str]) -> tuple[float, int]:
    """MiB the text memos hold after 300 distinct pairs of 20,000-character prompts, and the
    most characters any one of them holds."""
    from semcache import policy, verification
    from semcache.memo import TextMemo

    rng = random.Random(6)
    gc.collect()
    tracemalloc.start()
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(2_800))[:20_000]
        other = text + " again"
        policy.guard_mismatch(other, text)
        policy.reworded(other, text)
        verification.lexical_features(other, text)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    memos = [v for m in (policy, verification) for v in vars(m).values()]
    return held / 2**20, max(m.held_chars for m in memos if isinstance(m, TextMemo))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args()
    words = words_of(args.data)
    lines = [
        f"# long prompts, {time.strftime('%Y-%m-%d')}, fake upstream answering in 5 ms",
        "",
        f"{'request':<26} {'as':<9} {'seconds':>8} | small exact hits beside it: "
        f"{'n':>4} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}",
    ]
    print(lines[0], flush=True)
    with fake_upstream(5) as upstream, sidecar(upstream, 3) as base_url:
        for n, (name, body) in enumerate(long_bodies(words).items()):
            raw = orjson.dumps(body)
            for label in ("miss", "exact hit"):
                seconds, small = asyncio.run(beside(base_url, raw, f"sk-long-{n}"))
                ms = np.array(small) * 1000
                line = (
                    f"{name:<26} {label:<9} {seconds:>8.2f} | {'':>27} {len(ms):>4} "
                    f"{np.percentile(ms, 50):>7.1f} {np.percentile(ms, 99):>7.1f} {ms.max():>7.1f}"
                )
                print(line, flush=True)
                lines.append(line)
    held, chars = memo_memory(words)
    lines += [
        "",
        f"text memos after 300 distinct pairs of 20,000-character prompts: {held:.0f} MiB held, "
        f"at most {chars:,} characters of text in one memo",
    ]
    print(lines[-1])
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
