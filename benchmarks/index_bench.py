"""Benchmark of large scopes: a million entries in one scope of one sidecar.

    python benchmarks/index_bench.py [--entries 1000000] [--stall-entries 200000]

Printed, and written to benchmarks/results/index_bench.txt:

1. the index alone (``FaissIndex``): build time, single-query search p50/p99 and recall@1
   against exact search for several ``nprobe``, serialised size and load time, and its memory
   per entry. The IVF index holds half-precision vectors; as the cache does, a search takes
   its ``top_k`` candidates and rescores them with the float32 vectors (timed with it), so
   recall@1 is the share of lookups whose exact nearest is the one the cache would judge;
2. the whole cache at that size: memory per entry beyond the vector (the answers live on disk),
   reopen from the snapshot, and a rebuild from the store without re-embedding (scan, catalog,
   flat index serving at once, IVF trained beside it);
3. maintenance stalls at ``--stall-entries``: lookup p50/p99 on the grown scope and on another
   one, quiet, during a retrain, and during a checkpoint.

The vectors are synthetic, shaped like the model's: each is a real all-MiniLM-L6-v2 embedding
of a QQP question (a "topic", 20,000 of them) plus noise, at cosine ~0.75 from its topic, so the
scope is clustered as real prompts are. Queries are stored vectors moved to cosine ~0.93 (a
paraphrase of a stored prompt: the lookups where a lost nearest neighbour is a lost hit), and
recall@1 is also given for queries drawn like new prompts. Search runs on one thread, as the
cache sets it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semcache import CacheRequest, SemanticCache  # noqa: E402
from semcache.config import CacheConfig  # noqa: E402
from semcache.index import FaissIndex, ivf_lists  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "index_bench.txt"
CACHE = ROOT / "benchmarks" / ".cache"
DIM = 384
TOP_K = CacheConfig().top_k  # candidates a lookup examines
TOPICS = 20_000
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def topics(data: Path) -> NDArray[np.float32]:
    """Real embeddings of QQP questions, computed once and kept in benchmarks/.cache."""
    path = CACHE / f"topics_{TOPICS}.npy"
    if path.exists():
        return np.load(path)
    from semcache.embedding import make_embedder

    texts: list[str] = []
    with (data / "clusters_qqp_gptcache.jsonl").open() as file:
        for line in file:
            row = json.loads(line)
            texts.extend(row.get("texts") or [row.get("text", "")])
            if len(texts) >= TOPICS:
                break
    vectors = make_embedder().embed([t for t in texts[:TOPICS] if t])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def unit(rows: NDArray[np.float32]) -> NDArray[np.float32]:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def around(
    centres: NDArray[np.float32], cosine: float, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Each row of ``centres`` moved to about ``cosine`` from where it was."""
    sigma = np.sqrt((1 / cosine**2 - 1) / DIM)
    return unit(centres + rng.standard_normal(centres.shape, dtype=np.float32) * sigma)


def synthetic(n: int, base: NDArray[np.float32], seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        picks = base[rng.integers(len(base), size=stop - start)]
        out[start:stop] = around(picks, 0.75, rng)
    return out


def percentiles(ms: Sequence[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def exact_top1(vectors: NDArray[np.float32], queries: NDArray[np.float32]) -> NDArray[np.int64]:
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, ids = flat.search(queries, 1)
    faiss.omp_set_num_threads(1)
    return ids[:, 0].astype(np.int64)


def rescored_top1(
    index: FaissIndex, vectors: NDArray[np.float32], queries: NDArray[np.float32]
) -> NDArray[np.int64]:
    """The nearest stored id per query as the cache finds it: the index's top ``top_k``
    (scores in half precision), rescored with the float32 vectors the entries hold."""
    _, ids = index.search(queries, TOP_K)
    exact = np.einsum("qkd,qd->qk", vectors[np.maximum(ids, 0)], queries)
    exact[ids < 0] = -np.inf
    return np.asarray(ids[np.arange(len(ids)), exact.argmax(axis=1)], np.int64)


def index_figures(vectors: NDArray[np.float32], base: NDArray[np.float32], n: int) -> None:
    rng = np.random.default_rng(7)
    near = around(vectors[rng.integers(n, size=1000)], 0.93, rng)
    new = around(base[rng.integers(len(base), size=1000)], 0.75, rng)
    truth_near, truth_new = exact_top1(vectors, near), exact_top1(vectors, new)
    ids = np.arange(n, dtype=np.int64)
    before = rss()
    started = time.perf_counter()
    index = FaissIndex(DIM, exact_max=50_000).rebuilt(ids, vectors)
    build_s = time.perf_counter() - started
    assert isinstance(index, FaissIndex)
    per_entry = (rss() - before) / n
    say(f"## the index alone, {n:,} vectors in one scope ({ivf_lists(n)} inverted lists)")
    say(f"build (k-means on a sample, then add): {build_s:.1f} s")
    say(
        f"memory: {per_entry:.0f} bytes per entry, the vector's {DIM * 2} (half precision) included"
    )
    say()
    say(f"{'nprobe':>6} | {'p50 ms':>7} | {'p99 ms':>7} | {'recall@1 paraphrase':>19} | {'new':>6}")
    say("-" * 58)
    for nprobe in (8, 16, 32, 64, 128):
        index._index.nprobe = nprobe
        times = []
        found = np.empty(len(near), np.int64)
        for row in range(len(near)):
            t = time.perf_counter()
            found[row] = rescored_top1(index, vectors, near[row : row + 1])[0]
            times.append((time.perf_counter() - t) * 1000)
        got_new = rescored_top1(index, vectors, new)
        p50, p99 = percentiles(times)
        say(
            f"{nprobe:>6} | {p50:>7.2f} | {p99:>7.2f} | {np.mean(found == truth_near):>19.4f} | "
            f"{np.mean(got_new == truth_new):>6.4f}"
        )
    started = time.perf_counter()
    data = index.to_bytes()
    dump_s = time.perf_counter() - started
    started = time.perf_counter()
    FaissIndex.from_bytes(data, dim=DIM, trained_on=n, exact_max=50_000, nprobe=32)
    say(
        f"\nserialised: {len(data) / 2**30:.2f} GiB in {dump_s:.1f} s; loaded in "
        f"{time.perf_counter() - started:.1f} s"
    )
    del data, index
    gc.collect()


class ArrayEmbedder:
    """Prompts ``"s<i>"`` are stored row ``i``; ``"q<i>"`` are query row ``i``."""

    name = "synthetic-minilm-shaped"

    def __init__(self, stored: NDArray[np.float32], queries: NDArray[np.float32]) -> None:
        self.stored, self.queries = stored, queries

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.stack(
            [(self.stored if t[0] == "s" else self.queries)[int(t[1:].split()[0])] for t in texts]
        )


def fill(cache: SemanticCache, n: int, namespace: str = "default") -> None:
    for start in range(0, n, 5000):
        stop = min(n, start + 5000)
        cache.put_many(
            [f"s{i} stored" for i in range(start, stop)],
            [{"answer": f"a{i}"} for i in range(start, stop)],
            namespace=namespace,
        )


def cache_figures(vectors: NDArray[np.float32], n: int, folder: Path) -> None:
    rng = np.random.default_rng(3)
    queries = around(vectors[rng.integers(n, size=2000)], 0.93, rng)
    embedder = ArrayEmbedder(vectors, queries)
    say()
    say(f"## the cache at {n:,} entries in one scope (answers on disk, ~60 bytes each)")
    gc.collect()
    before = rss()
    started = time.perf_counter()
    cache = SemanticCache(folder, embedder=embedder, verifier=None, guards=False)
    fill(cache, n)
    cache.wait_for_index()
    fill_s = time.perf_counter() - started
    gc.collect()
    per_entry = (rss() - before) / n
    say(f"filled in {fill_s:.0f} s; memory {per_entry:.0f} bytes per entry, of which the vector")
    say(f"is {DIM * 2} (half precision; {DIM * 4} in float32): {per_entry - DIM * 2:.0f} bytes")
    say("beyond it")
    cache.close()
    del cache
    gc.collect()
    started = time.perf_counter()
    cache = SemanticCache(folder, embedder=embedder, verifier=None, guards=False)
    reopen_s = time.perf_counter() - started
    hit = cache.get("q5 asked")
    say(f"reopen from the snapshot: {reopen_s:.1f} s ({cache.stats()['indexes']}; a lookup hits:")
    say(f"{hit is not None})")
    cache.close()
    del cache
    gc.collect()
    (folder / "index.snapshot").unlink()
    started = time.perf_counter()
    cache = SemanticCache(folder, embedder=embedder, verifier=None, guards=False)
    serving_s = time.perf_counter() - started
    cache.wait_for_index()
    rebuilt_s = time.perf_counter() - started
    say(f"rebuild from the store, no re-embedding: serving (exact search) after {serving_s:.1f} s,")
    say(f"IVF trained and swapped in after {rebuilt_s:.1f} s ({cache.stats()['indexes']})")
    cache.close()


def lookups_during(
    cache: SemanticCache, prompts: Sequence[tuple[str, str]], work: Callable[[], None] | None
) -> tuple[dict[str, tuple[float, float]], float]:
    """Lookup p50/p99 (ms) per namespace while ``work`` runs (or over a quiet stretch of 3 s),
    and how long it ran."""
    done = threading.Event()
    took = [0.0]

    def run() -> None:
        started = time.perf_counter()
        if work is not None:
            work()
        else:
            time.sleep(3)
        took[0] = time.perf_counter() - started
        done.set()

    thread = threading.Thread(target=run)
    times: dict[str, list[float]] = {}
    thread.start()
    i = 0
    while not done.is_set() or i < 100:
        prompt, namespace = prompts[i % len(prompts)]
        i += 1
        started = time.perf_counter()
        cache.lookup(CacheRequest(prompt=prompt, namespace=namespace))
        times.setdefault(namespace, []).append((time.perf_counter() - started) * 1000)
        time.sleep(0.002)
    thread.join()
    return {k: percentiles(v) for k, v in times.items()}, took[0]


def stall_figures(vectors: NDArray[np.float32], n: int, folder: Path) -> None:
    rng = np.random.default_rng(5)
    queries = around(vectors[rng.integers(n, size=500)], 0.93, rng)
    embedder = ArrayEmbedder(vectors, queries)
    cache = SemanticCache(
        folder, embedder=embedder, verifier=None, guards=False, exact_index_max=n // 4 - 1000
    )
    fill(cache, n // 4)  # one scope, moved to IVF near n/4
    fill(cache, 2000, namespace="other")
    cache.wait_for_index()
    trained = max(scope.index.trained_on for scope in cache._index._scopes.values())
    crossing = 4 * trained + 1  # the size at which the next retrain starts
    # Grown to just under it (unmeasured): what is measured is the retrain itself, beside the
    # serving index, started by a store of 50 entries.
    for start in range(n // 4, crossing - 25, 5000):
        stop = min(crossing - 25, start + 5000)
        cache.put_many(
            [f"s{i} stored" for i in range(start, stop)],
            [{"answer": i} for i in range(start, stop)],
        )
    cache.checkpoint()
    prompts = [(f"q{i} asked", ns) for i in range(500) for ns in ("default", "other")]

    def retrain() -> None:
        cache.put_many(
            [f"s{i} stored" for i in range(crossing - 25, crossing + 25)],
            [{"answer": i} for i in range(50)],
        )
        cache.wait_for_index()

    def checkpoint() -> None:
        cache.put("s0 stored again", {"answer": 0})  # something new to checkpoint
        cache.checkpoint()

    say()
    say(
        f"## maintenance beside lookups: a scope retrained at {crossing:,} entries ('default'), "
        f"one of 2,000"
    )
    say(f"{'while':<32} | {'scope':<8} | {'p50 ms':>7} | {'p99 ms':>7} | {'work s':>7}")
    say("-" * 74)
    for label, work in (("nothing", None), ("a retrain (at 4x trained)", retrain),
                        ("a checkpoint", checkpoint), ("nothing, again", None)):  # fmt: skip
        figures, took = lookups_during(cache, prompts, work)
        for scope, (p50, p99) in sorted(figures.items()):
            say(f"{label:<32} | {scope:<8} | {p50:>7.2f} | {p99:>7.2f} | {took:>7.1f}")
    say(f"(retrains swapped in: {cache.stats()['index_retrains']})")
    cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--stall-entries", type=int, default=200_000)
    parser.add_argument("--skip", default="", help="comma-separated: index,cache,stalls")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    faiss.omp_set_num_threads(1)
    say(f"# index benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, synthetic")
    say("# vectors shaped like all-MiniLM-L6-v2's (see the docstring)")
    say()
    base = topics(args.data)
    vectors = synthetic(max(args.entries, args.stall_entries + 20_000), base, seed=1)
    folder = Path(tempfile.mkdtemp(prefix="semcache-index-bench-"))
    try:
        if "index" not in skip:
            index_figures(vectors[: args.entries], base, args.entries)
        if "cache" not in skip:
            cache_figures(vectors[: args.entries], args.entries, folder / "big")
            shutil.rmtree(folder / "big")
        if "stalls" not in skip:
            stall_figures(vectors, args.stall_entries, folder / "stalls")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
