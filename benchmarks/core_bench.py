"""Benchmark of the core library: latency, throughput, memory, index recall and hit quality.

    python benchmarks/core_bench.py [--data ../shared/data] [--sizes 1000,10000,100000]

Prints tables and writes them to benchmarks/results/core_bench.txt. Figures:

1. at 1k, 10k and 100k entries in one scope: get and put latency (p50, p99) and throughput,
   single calls and batches of 64, end to end with the real model; and the cache's own cost
   with the vectors computed beforehand (what is left when the model is taken out);
2. memory (RSS) and disk per entry, and the time to reopen from the snapshot or by a rebuild;
3. recall of the IVF index against exact search at the largest size;
4. precision and recall of hits on the first 3,000 QQP pairs, beside an exact-match cache.

Entries are real questions (clusters_qqp_gptcache.jsonl); queries are other questions from the
same file, so most lookups run the full semantic path and miss, which is the slow path.
Vectors for filling the caches are computed once and kept in benchmarks/.cache/.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from semcache import CacheRequest, SemanticCache, SentenceTransformerEmbedder
from semcache.evaluation import (
    PrecomputedEmbedder,
    exact_outcomes,
    load_pairs,
    metrics_at,
    metrics_at_defaults,
    run_pairs,
)
from semcache.keys import normalize_prompt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "core_bench.txt"
BATCH = 64
SAMPLES = 200

lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_texts(data: Path, count: int) -> list[str]:
    texts: list[str] = []
    seen: set[str] = set()
    with open(data / "clusters_qqp_gptcache.jsonl", "rb") as file:
        for line in file:
            text = json.loads(line)["text"].strip()
            key = normalize_prompt(text)  # texts equal to the exact tier would replace each other
            if text and key not in seen:
                seen.add(key)
                texts.append(text)
                if len(texts) == count:
                    break
    return texts


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def row(size: int, operation: str, samples: Sequence[float], items_per_call: int) -> str:
    ms = np.array(samples) * 1000
    per_second = items_per_call * len(samples) / (sum(samples) or 1e-9)
    return (
        f"{size:>7} | {operation:<40} | {np.percentile(ms, 50):>8.2f} | "
        f"{np.percentile(ms, 99):>8.2f} | {per_second:>9.0f}"
    )


def header() -> None:
    say(f"{'entries':>7} | {'operation':<40} | {'p50 ms':>8} | {'p99 ms':>8} | {'items/s':>9}")
    say("-" * 86)


def fill(cache: SemanticCache, texts: Sequence[str]) -> None:
    for start in range(0, len(texts), 1000):
        chunk = texts[start : start + 1000]
        cache.put_many(chunk, [{"answer": t} for t in chunk])


def bench_size(
    size: int,
    stored: Sequence[str],
    queries: Sequence[str],
    model: SentenceTransformerEmbedder,
    precomputed: PrecomputedEmbedder,
    workdir: Path,
) -> None:
    directory = workdir / f"size-{size}"
    with SemanticCache(directory, embedder=precomputed) as cache:
        started = time.perf_counter()
        fill(cache, stored[:size])
        fill_s = time.perf_counter() - started
        say(row(size, "fill: put_many x1000, vectors precomputed", [fill_s], size))
        q = iter(queries)
        say(row(size, "get, exact tier", timed(lambda: cache.get(stored[7].upper()), SAMPLES), 1))
        say(
            row(
                size,
                "get, semantic, vectors precomputed",
                timed(lambda: cache.get(next(q)), SAMPLES),
                1,
            )
        )
        say(
            row(
                size, "put, vectors precomputed", timed(lambda: cache.put(next(q), "a"), SAMPLES), 1
            )
        )
    # Same directory, same entries, now with the model in the loop.
    with SemanticCache(directory, embedder=model) as cache:
        q = iter(queries[2 * SAMPLES :])
        say(row(size, "get, semantic, model", timed(lambda: cache.get(next(q)), SAMPLES), 1))
        batches = iter([queries[i : i + BATCH] for i in range(4 * SAMPLES, len(queries), BATCH)])
        say(
            row(
                size,
                f"get_many x{BATCH}, model (per call)",
                timed(lambda: cache.get_many(next(batches)), 10),
                BATCH,
            )
        )
        say(row(size, "put, model", timed(lambda: cache.put(next(q), "a"), SAMPLES // 2), 1))
        say(
            row(
                size,
                f"put_many x{BATCH}, model (per call)",
                timed(lambda: cache.put_many(b := next(batches), ["a"] * len(b)), 10),
                BATCH,
            )
        )
    shutil.rmtree(directory)


def memory_probe(size: int, vectors_path: Path, data: Path) -> None:
    """Run in a child process: RSS and disk per entry, and reopen times, at ``size`` entries."""
    precomputed = PrecomputedEmbedder(SentenceTransformerEmbedder(), vectors_path)
    texts = load_texts(data, size)
    # The lookup table and the tokenizer's model are in memory before the baseline.
    precomputed.embed(texts[:1])
    precomputed.read(texts[:1])
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        before = rss_bytes()
        with SemanticCache(tmp, embedder=precomputed) as cache:
            fill(cache, texts)
            gc.collect()
            after = rss_bytes()
            kinds = cache.stats()["indexes"]
            entries = len(cache)
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        started = time.perf_counter()
        SemanticCache(tmp, embedder=precomputed).close()
        snapshot_s = time.perf_counter() - started
        (Path(tmp) / "index.snapshot").unlink()
        started = time.perf_counter()
        with SemanticCache(tmp, embedder=precomputed) as cache:
            rebuild_s = time.perf_counter() - started
            assert len(cache) == entries == size
    print(json.dumps({
        "size": size, "rss_per_entry": (after - before) / size, "disk_per_entry": disk / size,
        "open_snapshot_s": snapshot_s, "open_rebuild_s": rebuild_s, "indexes": kinds,
    }))  # fmt: skip


def ivf_recall(
    texts: Sequence[str], queries: Sequence[str], precomputed: PrecomputedEmbedder, workdir: Path
) -> None:
    with SemanticCache(workdir / "recall", embedder=precomputed) as cache:
        fill(cache, texts)
        kinds = cache.stats()["indexes"]
        stored = precomputed.embed(texts)
        ids = np.array([cache._store.find_exact(CacheRequest(prompt=t).exact_key) for t in texts])
        query_vectors = precomputed.embed(queries)
        scope = next(iter(cache._index._scopes))
        _, found = cache._index.search(scope, query_vectors, 8)
    exact_top = np.argsort(-(query_vectors @ stored.T), axis=1)[:, :8]
    exact_ids = ids[exact_top]
    at1 = float(np.mean(found[:, 0] == exact_ids[:, 0]))
    at8 = float(np.mean([len(set(f) & set(e)) / 8 for f, e in zip(found, exact_ids, strict=True)]))
    say(
        f"index {kinds} at {len(texts)} entries, nprobe {cache.config.ivf_nprobe}: "
        f"recall@1 {at1:.3f}, recall@8 {at8:.3f} against exact search ({len(queries)} queries)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    vectors_path = HERE / ".cache" / "clusters-qqp-embeddings.npz"
    if args.memory_probe:
        memory_probe(args.memory_probe, vectors_path, args.data)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    largest = max(sizes)
    model = SentenceTransformerEmbedder()
    texts = load_texts(args.data, largest + 3000)
    stored, queries = texts[:largest], texts[largest:]
    precomputed = PrecomputedEmbedder(model, vectors_path)
    started = time.perf_counter()
    precomputed.prefill(texts)
    say(
        f"# semcache core benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"model {model.name}"
    )
    say(
        f"vectors for {len(texts)} texts ready in {time.perf_counter() - started:.0f} s "
        f"(computed once, then read from {vectors_path.name})"
    )
    sample = queries[:1024]
    throughput = timed(lambda: model.embed(sample), 1)[0]
    say(
        f"model alone: {len(sample) / throughput:.0f} texts/s batched; "
        f"{np.median(timed(lambda: model.embed([sample[5]]), 50)) * 1000:.1f} ms for one text"
    )
    say()
    header()
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            bench_size(size, stored, queries, model, precomputed, Path(tmp))
        say()
        say(
            f"{'entries':>7} | {'RSS/entry':>10} | {'disk/entry':>10} | "
            f"{'open (snapshot)':>15} | {'open (rebuild)':>14} | index"
        )
        for size in sizes:
            probe = subprocess.run(
                [sys.executable, __file__, "--data", str(args.data), "--memory-probe", str(size)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            m = json.loads(probe.stdout.strip().splitlines()[-1])
            say(
                f"{size:>7} | {m['rss_per_entry']:>8.0f} B | {m['disk_per_entry']:>8.0f} B | "
                f"{m['open_snapshot_s']:>13.2f} s | {m['open_rebuild_s']:>12.2f} s | {m['indexes']}"
            )
        say()
        ivf_recall(stored, queries[:1000], precomputed, Path(tmp))
    say()
    rows = load_pairs(args.data / "pairs_qqp_gptcache.jsonl", limit=3000)
    precomputed.prefill([r.a for r in rows] + [r.b for r in rows])
    with tempfile.TemporaryDirectory() as tmp, SemanticCache(tmp, embedder=precomputed) as cache:
        semantic = metrics_at_defaults(
            cache, run_pairs(cache, rows, floor=cache.min_similarity), rows
        )
        name = f"semcache (min_similarity {cache.min_similarity}"
        if cache.min_confidence is not None:
            name += f", min_confidence {cache.min_confidence}"
        name += ")"
    exact = metrics_at(exact_outcomes(rows), rows, 1.0)
    say(
        f"hits on the first {len(rows)} QQP pairs (put every a, get every b; right = the labels "
        f"join the two questions), {semantic.answerable} queries with a right answer stored:"
    )
    say(
        f"{'cache':<52} | {'hits':>5} | {'right':>5} | {'wrong':>5} | {'hit rate':>8} | "
        f"{'precision':>9} | {'recall':>6}"
    )
    for label, m in ((name, semantic), ("exact match", exact)):
        say(
            f"{label:<52} | {m.hits:>5} | {m.right:>5} | {m.wrong:>5} | {m.hit_rate:>8.3f} | "
            f"{m.precision:>9.3f} | {m.recall:>6.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
