"""Recall of the IVF index against exact search on real sentence vectors, not synthetic ones.

    python benchmarks/index_recall_bench.py [--data ../shared/data] [--queries 3000]

`index_bench.py` measures a million synthetic vectors; real text embeddings cluster less
evenly, and recall is what decides whether the nearest stored paraphrase is found at all. This
embeds every distinct question of QQP's clusters and pairs (about 137k texts), holds out
``--queries`` of them as lookups, and for growing cache sizes builds the index the cache builds
(`semcache.index`: about sqrt(n) inverted lists, k-means on 64 points per list), then reports
recall@1 against exact search for every ``nprobe``: over all lookups, and over those whose
exact nearest is at cosine 0.80 or more (the lookups that could be hits; the verifier's floor).
As in the cache, the index (half precision) gives ``top_k`` candidates and the float32 vectors
pick the nearest among them.
Search time is one FAISS thread, one query at a time. Written to
benchmarks/results/index_recall_bench.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from semcache.config import CacheConfig
from semcache.embedding import make_embedder
from semcache.index import _trained_ivf

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "index_recall_bench.txt"
CACHE = HERE / ".cache"
NEAR = 0.80
NPROBES = (4, 8, 16, 32)
TOP_K = CacheConfig().top_k  # candidates a lookup examines


def texts(data: Path) -> list[str]:
    found: list[str] = []
    with (data / "clusters_qqp_gptcache.jsonl").open() as file:
        found += [json.loads(line)["text"] for line in file]
    with (data / "pairs_qqp_gptcache.jsonl").open() as file:
        for line in file:
            row = json.loads(line)
            found += [row["a"], row["b"]]
    return list(dict.fromkeys(t for t in found if t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--queries", type=int, default=3000)
    args = parser.parse_args()
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    corpus = texts(args.data)
    started = time.perf_counter()
    cached = CACHE / f"index-recall-{len(corpus)}.npy"  # the vectors, in the corpus's order
    if cached.is_file():
        vectors = np.load(cached)
        how = f"vectors read from {cached.relative_to(HERE.parent)}"
    else:
        model = make_embedder()
        chunks = [corpus[i : i + 256] for i in range(0, len(corpus), 256)]
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            vectors = np.concatenate(list(pool.map(model.embed, chunks))).astype(np.float32)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors)
        how = f"embedded in {time.perf_counter() - started:.0f} s"
    vectors = vectors[np.random.default_rng(1).permutation(len(vectors))]
    faiss.omp_set_num_threads(1)
    say(
        f"# IVF recall on real vectors, {time.strftime('%Y-%m-%d')}: {len(corpus):,} distinct "
        f"QQP questions, {how}"
    )
    say(f"# {args.queries:,} held out as lookups; 'near' = exact nearest at cosine >= {NEAR}")
    say()
    say(f"{'entries':>8} | {'lists':>5} | {'nprobe':>6} | {'recall all':>10} | "
        f"{'recall near':>11} | {'near':>5} | {'ms/query':>8}")  # fmt: skip
    say("-" * 72)
    queries, stored = vectors[: args.queries], vectors[args.queries :]
    sizes = sorted({n for n in (50_000, 100_000) if n < len(stored)} | {len(stored)})
    for n in sizes:
        part = stored[:n]
        exact = faiss.IndexFlatIP(part.shape[1])
        exact.add(part)
        best_scores, best_ids = exact.search(queries, 1)
        near = best_scores[:, 0] >= NEAR
        index = _trained_ivf(part, part.shape[1], NPROBES[0])
        index.add(part)
        for nprobe in NPROBES:
            index.nprobe = nprobe
            started = time.perf_counter()
            _, ids = index.search(queries, TOP_K)
            # As the cache does: the candidates rescored with their float32 vectors.
            exact_scores = np.einsum("qkd,qd->qk", part[np.maximum(ids, 0)], queries)
            exact_scores[ids < 0] = -np.inf
            chosen = ids[np.arange(len(ids)), exact_scores.argmax(axis=1)]
            ms = (time.perf_counter() - started) / len(queries) * 1000
            found = chosen == best_ids[:, 0]
            say(
                f"{n:>8,} | {index.nlist:>5} | {nprobe:>6} | {found.mean():>10.4f} | "
                f"{found[near].mean():>11.4f} | {int(near.sum()):>5} | {ms:>8.2f}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
