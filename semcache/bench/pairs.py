"""Pair mode: store every distinct ``a``, look up every ``b``, sweep the threshold."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from semcache.bench import gptcache_baseline
from semcache.cache import SemanticCache
from semcache.embedding import Embedder
from semcache.evaluation import (
    Metrics,
    Outcome,
    PairRow,
    exact_outcomes,
    in_split,
    metrics_at,
    run_pairs,
    sweep,
)

THRESHOLDS = [round(0.50 + 0.01 * i, 2) for i in range(50)]


@dataclass
class PairReport:
    rows: int
    duplicates: int
    threshold: float
    semcache: Metrics
    sweep: list[Metrics]
    target_precision: float
    target_threshold: float | None
    baselines: dict[str, Metrics | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pair_rows(raw: Sequence[dict[str, Any]], split: str | None) -> list[PairRow]:
    rows = [
        PairRow(a=r["a"], b=r["b"], duplicate=bool(r["duplicate"]), id=int(r.get("id", i)))
        for i, r in enumerate(raw)
    ]
    return [r for r in rows if in_split(r.id, split)]


def run(
    rows: Sequence[PairRow],
    *,
    embedder: Embedder | None,
    min_similarity: float | None,
    target_precision: float,
    model: str | None = None,
    progress: bool = True,
) -> PairReport:
    options: dict[str, Any] = {} if min_similarity is None else {"min_similarity": min_similarity}
    with (
        tempfile.TemporaryDirectory(prefix="semcache-bench-") as directory,
        SemanticCache(directory, embedder=embedder, model=model, **options) as cache,
    ):
        threshold = cache.config.min_similarity
        outcomes = _run_pairs(cache, rows, progress)
    curve = sweep(outcomes, rows, THRESHOLDS)
    reaching = [m for m in curve if m.hits and m.precision >= target_precision]
    report = PairReport(
        rows=len(rows),
        duplicates=sum(r.duplicate for r in rows),
        threshold=threshold,
        semcache=metrics_at(outcomes, rows, threshold),
        sweep=curve,
        target_precision=target_precision,
        target_threshold=reaching[0].threshold if reaching else None,
    )
    report.baselines["no cache"] = metrics_at([Outcome(None, False)] * len(rows), rows, 1.0)
    report.baselines["exact match"] = metrics_at(exact_outcomes(rows), rows, 1.0)
    if gptcache_baseline.available():
        report.baselines["GPTCache (default threshold)"] = _gptcache(rows, model, progress)
    else:
        report.baselines["GPTCache (default threshold)"] = None
        report.notes.append("GPTCache baseline skipped: pip install 'semcache[gptcache]'")
    return report


def _run_pairs(cache: SemanticCache, rows: Sequence[PairRow], progress: bool) -> list[Outcome]:
    answers = len(set(row.a for row in rows))
    with tqdm(total=answers + len(rows), disable=not progress, desc="pairs", unit="q") as bar:
        return run_pairs(cache, rows, floor=THRESHOLDS[0], on_progress=bar.update)


def _gptcache(rows: Sequence[PairRow], model: str | None, progress: bool) -> Metrics:
    baseline = gptcache_baseline.GPTCacheBaseline(model)
    try:
        answers = list(dict.fromkeys(row.a for row in rows))
        baseline.put_many(answers, answers)
        outcomes = []
        for row in tqdm(rows, disable=not progress, desc="GPTCache", unit="q"):
            answer = baseline.get(row.b)
            right = answer is not None and row.duplicate and answer == row.a
            outcomes.append(Outcome(None if answer is None else 1.0, right))
    finally:
        baseline.close()
    return metrics_at(outcomes, rows, 1.0)
