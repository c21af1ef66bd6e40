"""Benchmark of request batching: small requests sharing a long system prompt, merged.

    python benchmarks/batching_bench.py [--data ../shared/data] [--requests 300] [--rate 20]

The sidecar (``semcache serve``, real model) runs over a fake upstream on 127.0.0.1 that
answers after ``--upstream-ms`` and reports usage counted with the tokenizer (so billed tokens
are what an upstream would bill), each in a process of its own; calls and billed tokens are
read from the sidecar's metrics. Requests arrive as a Poisson process at ``--rate`` per
second. Each has the same ~1,000-token system prompt (a bank's support classifier: the
BANKING77 intents with examples of each, from the train split) and one ~50-token user message
(real ShareGPT first prompts of 40-60 tokens), all distinct so that none is a cache hit. Runs,
one after the other on the same requests, each on a fresh sidecar:

1. unbatched (no header): every request its own call;
2. batched, ``X-Semcache-Batch: allow`` at windows of 50 ms (the default), 250 and 400 ms;
3. batched at 250 ms against a misbehaving upstream: half the merged calls are answered with
   one of the faults of ``tests/fake_openai.BATCH_FAULTS`` (shuffled, dropped, duplicated,
   extra or swapped ids, truncated, malformed, refused, empty).

Per run: upstream calls per request, billed input tokens and the ratio to unbatched, the
ratio of spend (input and output at gpt-4o-mini's prices: a merged answer is longer), client
latency p50/p99 and what batching adds to it, answers delivered to the wrong caller (every
client checks that its answer was made for its own message) and the fallback rate.

Writes benchmarks/results/batching_bench.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sidecar_bench import free_port, running
from semcache.tokens import count_text

MODEL = "gpt-4o-mini"
RESULTS = Path(__file__).parent / "results" / "batching_bench.txt"


def system_prompt(data: Path, target_tokens: int = 1000) -> str:
    by_intent: dict[str, list[str]] = {}
    with (data / "clusters_banking77.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            if row["split"] == "train" and len(by_intent.setdefault(row["intent"], [])) < 2:
                by_intent[row["intent"]].append(row["text"])
    text = (
        "You are the first line of a bank's customer support. Classify the customer's message "
        "into exactly one of the intents below and reply with the intent's name, then one "
        "sentence the agent can send back. Intents, each with examples of messages:\n"
    )
    for intent, examples in sorted(by_intent.items()):
        line = f"- {intent}: " + " | ".join(examples) + "\n"
        if count_text(text + line) > target_tokens:
            break
        text += line
    return text


def items(data: Path, count: int, seed: int = 7) -> list[str]:
    texts = [
        json.loads(line)["text"] for line in (data / "prompts_sharegpt_first_turn.jsonl").open()
    ]
    chosen = [t for t in texts if 40 <= count_text(t) <= 60]
    random.Random(seed).shuffle(chosen)
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} prompts of 40-60 tokens, asked for {count}")
    return chosen[:count]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def stack(window_ms: float, *, upstream_ms: float, fault_rate: float) -> Iterator[str]:
    """A fake upstream and a sidecar over it, each a process of its own; the sidecar's URL."""
    upstream_port, sidecar_port = free_port(), free_port()
    fake = [sys.executable, "-m", "tests.fake_openai", str(upstream_port), str(upstream_ms)]
    fake += ["--count-tokens", "--batch-fault-rate", str(fault_rate)]
    with (
        running(fake, f"http://127.0.0.1:{upstream_port}/v1/models"),
        tempfile.TemporaryDirectory() as cache_dir,
    ):
        sidecar = [
            sys.executable, "-m", "semcache", "serve", "--port", str(sidecar_port),
            "--upstream", f"http://127.0.0.1:{upstream_port}/v1", "--cache-dir", cache_dir,
            "--batch-window-ms", str(window_ms), "--batch-max-items", "8",
            "--log-level", "warning",
        ]  # fmt: skip
        with running(sidecar, f"http://127.0.0.1:{sidecar_port}/healthz"):
            yield f"http://127.0.0.1:{sidecar_port}"


async def run(
    label: str,
    system: str,
    prompts: list[str],
    *,
    rate: float,
    upstream_ms: float,
    window_ms: float | None,
    fault_rate: float = 0.0,
    seed: int = 11,
) -> dict[str, Any]:
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    with stack(window_ms or 50.0, upstream_ms=upstream_ms, fault_rate=fault_rate) as url:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
            if window_ms is not None:
                headers["X-Semcache-Batch"] = "allow"

            async def one(prompt: str) -> None:
                body = {
                    "model": MODEL,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": prompt},
                    ],
                }
                started = time.perf_counter()
                async with session.post(
                    url + "/v1/chat/completions", data=orjson.dumps(body), headers=headers
                ) as response:
                    answer = await response.json(content_type=None)
                    batch = response.headers.get("X-Semcache-Batch", "")
                latencies.append(1000 * (time.perf_counter() - started))
                if response.status != 200:
                    outcomes["failed"] += 1
                    return
                if not answer["choices"][0]["message"]["content"].endswith(": " + prompt):
                    outcomes["wrong"] += 1
                if "fallback=" in batch:
                    outcomes["fallback"] += 1
                elif batch and not batch.startswith("single"):
                    outcomes["merged"] += 1

            # Warm-up requests (connections open, first-call costs paid), not counted.
            await asyncio.gather(*(one(f"Warm-up {i}: where is my card?") for i in range(4)))
            latencies.clear()
            outcomes.clear()
            before = await _upstream_totals(session, url)
            rng = random.Random(seed)
            tasks = []
            for prompt in prompts:
                tasks.append(asyncio.create_task(one(prompt)))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
            after = await _upstream_totals(session, url)
    in_merged = outcomes["merged"] + outcomes["fallback"]
    return {
        "label": label,
        "calls_per_request": (after[0] - before[0]) / len(prompts),
        "billed_input": int(after[1] - before[1]),
        "cost": after[2] - before[2],
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "wrong": outcomes["wrong"],
        "failed": outcomes["failed"],
        "fallback_rate": outcomes["fallback"] / in_merged if in_merged else 0.0,
        "merged_share": in_merged / len(prompts),
    }


async def _upstream_totals(session: aiohttp.ClientSession, url: str) -> tuple[float, float, float]:
    """Upstream calls made, prompt tokens billed and spend (the sidecar's price table: prompt
    and completion) so far, from the sidecar's metrics."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    calls = tokens = cost = 0.0
    for line in text.splitlines():
        if line.startswith("semcache_upstream_requests_total{"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("semcache_upstream_tokens_total{") and 'kind="prompt"' in line:
            tokens += float(line.rsplit(" ", 1)[1])
        elif line.startswith("semcache_upstream_cost_usd_total{"):
            cost += float(line.rsplit(" ", 1)[1])
    return calls, tokens, cost


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--upstream-ms", type=float, default=100.0)
    args = parser.parse_args()
    system = system_prompt(args.data)
    prompts = items(args.data, args.requests)
    item_tokens = statistics.mean(count_text(p) for p in prompts)
    lines = [
        f"requests: {args.requests} at {args.rate:.0f}/s (Poisson); system prompt "
        f"{count_text(system)} tokens (shared); items {item_tokens:.0f} tokens on average; "
        f"upstream answers in {args.upstream_ms:.0f} ms",
    ]
    print(lines[0], flush=True)
    runs = [
        ("unbatched", None, 0.0),
        ("batched, window 50 ms", 50.0, 0.0),
        ("batched, window 250 ms", 250.0, 0.0),
        ("batched, window 400 ms", 400.0, 0.0),
        ("batched 250 ms, misbehaving upstream", 250.0, 0.5),
    ]
    results = []
    for label, window, fault_rate in runs:
        result = await run(
            label, system, prompts, rate=args.rate, upstream_ms=args.upstream_ms,
            window_ms=window, fault_rate=fault_rate,
        )  # fmt: skip
        results.append(result)
        print(f"  done: {label}", flush=True)
    base = results[0]
    header = (
        f"{'run':<38}| calls/req | billed input | vs unbatched | spend vs | p50 ms | p99 ms "
        f"| added p50/p99 | merged | fallback | wrong caller | failed"
    )
    lines += [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['label']:<38}| {r['calls_per_request']:>9.3f} | {r['billed_input']:>12,} | "
            f"{base['billed_input'] / r['billed_input']:>11.2f}x | "
            f"{base['cost'] / r['cost']:>7.2f}x | {r['p50']:>6.0f} | "
            f"{r['p99']:>6.0f} | {r['p50'] - base['p50']:>+6.0f}/{r['p99'] - base['p99']:>+5.0f} "
            f"| {r['merged_share']:>6.0%} | {r['fallback_rate']:>8.1%} | {r['wrong']:>12} | "
            f"{r['failed']:>6}"
        )
    lines.append(
        "goals: calls/req <= 0.2, billed input >= 4x fewer, added latency <= window + 10 ms, "
        "0 wrong-caller answers"
    )
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
