"""What the decision costs on the hit path: the verifier and the guards against cosine alone.

    python benchmarks/verifier_bench.py [--queries 500]

Stores the distinct questions ``a`` of the QQP test split (id % 10 == 0) and looks up the
first ``--queries`` questions ``b`` one at a time (as single requests arrive), in one cache
with the default verifier and in one without (``verifier=None``, the same floor). Embeddings
are computed by the real model in both, so the difference is the verifier's: its forward pass
over the ``verify_top`` (1) nearest candidate pairs. A third cache decides by cosine alone (no
verifier, no guards). Also timed: batches of 32 lookups whose prompts are already embedded (the
vectors are remembered from the single lookups), so that the decision is all they cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcache import SemanticCache
from semcache.config import CacheConfig
from semcache.embedding import make_embedder
from semcache.evaluation import load_pairs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "verifier_bench.txt"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    rows = load_pairs(args.data / "pairs_qqp_gptcache.jsonl", split="test")
    answers = list(dict.fromkeys(r.a for r in rows))
    queries = [r.b for r in rows[: args.queries]]
    embedder = make_embedder()
    lines = [
        f"{len(answers)} stored questions (QQP test split), {len(queries)} single lookups",
        "",
        f"{'cache':<34} | {'hits':>5} | {'all p50':>8} | {'all p99':>8} | {'hit p50':>8} | "
        f"{'hit p99':>8} | {'batch of 32':>11} | {'per lookup':>10}",
    ]
    reference = None
    for name, verifier, guards in (
        ("with the verifier and guards", "auto", True),
        ("guards, no verifier", None, True),
        ("cosine alone", None, False),
    ):
        with tempfile.TemporaryDirectory() as directory:
            probe = CacheConfig(verifier="auto")
            with SemanticCache(Path(directory) / "probe", embedder=embedder, config=probe) as c:
                floor = c.min_similarity
                reference = reference or c.verifier
            config = CacheConfig(verifier=verifier, min_similarity=floor, guards=guards)
            with SemanticCache(Path(directory) / "c", embedder=embedder, config=config) as cache:
                cache.put_many(answers, answers)
                cache.warm_up()
                all_ms, hit_ms = [], []
                for query in queries:
                    started = time.perf_counter()
                    hit = cache.get(query)
                    elapsed = 1000 * (time.perf_counter() - started)
                    all_ms.append(elapsed)
                    if hit is not None and hit.reason.value == "semantic":
                        hit_ms.append(elapsed)
                started = time.perf_counter()
                for start in range(0, 320, 32):
                    cache.get_many(queries[start : start + 32])
                batch_ms = 1000 * (time.perf_counter() - started) / 10
        lines.append(
            f"{name:<34} | {len(hit_ms):>5} | {statistics.median(all_ms):>6.1f}ms | "
            f"{percentile(all_ms, 0.99):>6.1f}ms | {statistics.median(hit_ms):>6.1f}ms | "
            f"{percentile(hit_ms, 0.99):>6.1f}ms | {batch_ms:>9.0f}ms | {batch_ms / 32:>8.2f}ms"
        )
    if reference is not None:
        lines += ["", f"verifier: {reference.name}, floor {floor}, min_confidence "
                  f"{reference.min_confidence}"]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
