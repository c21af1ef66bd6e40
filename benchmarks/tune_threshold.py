"""Choose the default ``min_similarity`` on QQP pairs, and check it on held-out rows.

Tuning part: rows 3000-14999 of pairs_qqp_gptcache.jsonl with id % 10 != 0 (disjoint from the
first 3,000 rows that benchmarks/core_bench.py reports on, and from the test split).
Held-out part: every row with id % 10 == 0 (the test split).

Prints precision, recall and F0.5 against the threshold, with the guards on and off.

    python benchmarks/tune_threshold.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from semcache import SemanticCache, SentenceTransformerEmbedder
from semcache.evaluation import (
    PrecomputedEmbedder,
    Scores,
    exact_outcomes,
    f_beta,
    load_pairs,
    metrics_at,
    run_pairs,
    sweep,
)

HERE = Path(__file__).resolve().parent
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(30)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args()
    pairs = args.data / "pairs_qqp_gptcache.jsonl"
    embedder = PrecomputedEmbedder(
        SentenceTransformerEmbedder(), HERE / ".cache" / "qqp-embeddings.npz"
    )
    parts = {
        "tune (rows 3000-14999, id%10!=0)": load_pairs(
            pairs, split="train", start=3000, limit=10_800
        ),
        "held-out (id%10==0)": load_pairs(pairs, split="test"),
    }
    chosen = None
    for label, rows in parts.items():
        embedder.prefill([r.a for r in rows] + [r.b for r in rows])
        print(f"\n== {label}: {len(rows)} pairs, {sum(r.duplicate for r in rows)} duplicates")
        results = {}
        for guards in (True, False):
            with (
                tempfile.TemporaryDirectory() as directory,
                SemanticCache(directory, embedder=embedder, guards=guards) as cache,
            ):
                outcomes = run_pairs(cache, rows, floor=THRESHOLDS[0])
            results[guards] = sweep(outcomes, rows, THRESHOLDS)
        exact = metrics_at(exact_outcomes(rows), rows, 1.0)
        print(
            f"exact-match baseline: hit rate {exact.hit_rate:.3f} precision {exact.precision:.3f} "
            f"recall {exact.recall:.3f}"
        )
        print(
            f"{'threshold':>9} | {'guards: prec':>12} {'recall':>7} {'F0.5':>6} {'hit%':>6}"
            f" | {'no guards: prec':>15} {'recall':>7} {'F0.5':>6}"
        )
        for on, off in zip(results[True], results[False], strict=True):
            print(
                f"{on.threshold:>9.2f} | {on.precision:>12.3f} {on.recall:>7.3f}"
                f" {f_beta(on, 0.5):>6.3f} {on.hit_rate:>6.3f} | {off.precision:>15.3f}"
                f" {off.recall:>7.3f} {f_beta(off, 0.5):>6.3f}"
            )
        if chosen is None:
            best = max(results[True], key=lambda m: f_beta(m, 0.5))
            chosen = best.threshold
            print(f"best F0.5 with guards on the tuning part: threshold {chosen}")
        else:
            held = metrics_at_threshold(results[True], chosen)
            print(
                f"at {chosen} on held-out rows: precision {held.precision:.3f} "
                f"recall {held.recall:.3f} hit rate {held.hit_rate:.3f}"
            )


def metrics_at_threshold(metrics: list[Scores], threshold: float) -> Scores:
    return next(m for m in metrics if m.threshold == threshold)


if __name__ == "__main__":
    main()
