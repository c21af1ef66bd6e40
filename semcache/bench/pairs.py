"""Pair mode: store every distinct ``a``, look up every ``b`` and adversarial swaps of every
``a``, sweep the knob (``min_confidence`` with a verifier, ``min_similarity`` without)."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from semcache.bench import gptcache_baseline
from semcache.bench.options import bar_off
from semcache.bench.swaps import KINDS, Swap, swap_variants
from semcache.cache import SemanticCache
from semcache.config import CacheConfig
from semcache.decision import Hit
from semcache.embedding import Embedder, SentenceTransformerEmbedder
from semcache.error_bound import CONFIDENCE_Z, ErrorBound
from semcache.evaluation import (
    Labels,
    Outcome,
    PairRow,
    PrecomputedEmbedder,
    Scores,
    exact_outcomes,
    in_split,
    lookups,
    metrics_at,
    run_pairs,
    sweep,
)
from semcache.keys import normalize_prompt

THRESHOLDS = [round(0.50 + 0.01 * i, 2) for i in range(50)]
CONFIDENCES = [round(0.05 * i, 2) for i in range(20)] + [0.97, 0.98, 0.99]


@dataclass
class PairReport:
    rows: int
    duplicates: int
    knob: str  # what the sweep moves: min_confidence with a verifier, else min_similarity
    threshold: float  # the knob's default
    floor: float  # the similarity floor in force
    verifier: str | None
    semcache: Scores
    sweep: list[Scores]
    target_precision: float
    target_threshold: float | None
    baselines: dict[str, Scores | None] = field(default_factory=dict)
    swaps: dict[str, dict[str, Scores]] = field(default_factory=dict)  # cache -> kind -> figures
    notes: list[str] = field(default_factory=list)
    bounded: list[BoundedReplay] = field(default_factory=list)


@dataclass(frozen=True)
class BoundedReplay:
    """The lookups replayed in a random order under ``max_error_rate``, each candidate's label
    fed back after its lookup (as the sidecar's miss comparisons and shadow checks would),
    against the best single threshold for the same bound, chosen knowing every label."""

    max_error_rate: float
    z: float  # the bound's confidence (ErrorBound's z)
    candidates: int  # lookups that had a candidate past the floor and the guards
    served: int
    wrong: int  # served and not right (unjudged counted wrong)
    fixed_threshold: float | None  # the best fixed threshold within the bound, in hindsight
    fixed_served: int
    fixed_wrong: int

    @property
    def realised_error(self) -> float:
        return self.wrong / self.served if self.served else 0.0


BOUND_CONFIDENCES = (CONFIDENCE_Z, 1.0, 0.0)  # the default, then less sure ones


def replay_bounded(
    outcomes: Sequence[Outcome], by: str, max_error_rate: float, *, seed: int, z: float
) -> BoundedReplay:
    """See :class:`BoundedReplay`."""
    labelled = [(key, o.right) for o in outcomes if (key := o.key(by)) is not None]
    order = list(range(len(labelled)))
    random.Random(seed).shuffle(order)
    bound = ErrorBound(max_error_rate, z=z)
    served = wrong = 0
    for i in order:
        key, right = labelled[i]
        if bound.allows("bench", key):
            served += 1
            wrong += not right
        bound.record("bench", key, wrong=not right)
    best: tuple[float | None, int, int] = (None, 0, 0)
    mistakes = 0
    for seen, (key, right) in enumerate(sorted(labelled, key=lambda pair: -pair[0]), start=1):
        mistakes += not right
        if mistakes <= max_error_rate * seen and seen > best[1]:
            best = (key, seen, mistakes)
    return BoundedReplay(max_error_rate, z, len(labelled), served, wrong, *best)


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
    min_confidence: float | None = None,
    seed: int = 0,
    labels: Labels | None = None,
    max_error_rate: float | None = None,
    gptcache: bool = True,
) -> PairReport:
    """Semcache at its defaults (the knob swept), semcache without its verifier, and the
    baselines, on the pairs and on adversarial swaps of the stored questions.

    ``labels`` judge the hits: by default those of ``rows``; the bench passes every row of the
    file, so that a hit on a question asked again in another row is judged by that row's
    label (labels judge, they never train anything here)."""
    labels = labels or Labels(rows)
    # Both semcache runs embed the same texts: compute each vector once.
    embedder = PrecomputedEmbedder(embedder or SentenceTransformerEmbedder(model))
    swaps = swap_variants(list(dict.fromkeys(row.a for row in rows)), seed=seed)
    config = CacheConfig(min_similarity=min_similarity, min_confidence=min_confidence)
    plain_config = CacheConfig(min_similarity=min_similarity, verifier=None)
    with tempfile.TemporaryDirectory(prefix="semcache-bench-") as directory:
        with SemanticCache(Path(directory) / "default", embedder=embedder, config=config) as cache:
            verifier = None if cache.verifier is None else cache.verifier.name
            knob = "min_similarity" if verifier is None else "min_confidence"
            floor = cache.min_similarity
            threshold = cache.min_confidence if cache.min_confidence is not None else floor
            pass_floor = THRESHOLDS[0] if verifier is None else floor
            outcomes = _run_pairs(cache, rows, progress, floor=pass_floor, labels=labels)
            swap_outcomes = _run_swaps(cache, swaps, progress, floor=floor)
        plain: tuple[list[Outcome], list[Outcome]] | None = None
        if verifier is not None:
            with SemanticCache(
                Path(directory) / "plain", embedder=embedder, config=plain_config
            ) as cache:
                plain_floor = cache.min_similarity
                plain = (
                    _run_pairs(cache, rows, progress, floor=plain_floor, labels=labels),
                    _run_swaps(cache, swaps, progress, floor=plain_floor),
                )
    by = "score" if verifier is None else "confidence"
    count = labels.answerable((r.b for r in rows), (r.a for r in rows))
    thresholds = THRESHOLDS if verifier is None else CONFIDENCES
    curve = sweep(outcomes, rows, thresholds, by=by, answerable_queries=count)
    reaching = [m for m in curve if m.hits and m.precision >= target_precision]
    report = PairReport(
        rows=len(rows),
        duplicates=sum(r.duplicate for r in rows),
        knob=knob,
        threshold=threshold,
        floor=floor,
        verifier=verifier,
        semcache=metrics_at(outcomes, rows, threshold, by=by, answerable_queries=count),
        sweep=curve,
        target_precision=target_precision,
        target_threshold=reaching[0].threshold if reaching else None,
    )
    if max_error_rate is not None:
        report.bounded = [
            replay_bounded(outcomes, by, max_error_rate, seed=seed, z=z) for z in BOUND_CONFIDENCES
        ]
    report.swaps["semcache"] = _swap_figures(swaps, swap_outcomes, threshold, by)
    if plain is not None:
        name = f"semcache without verifier ({plain_floor})"
        report.baselines[name] = metrics_at(plain[0], rows, plain_floor, answerable_queries=count)
        report.swaps[name] = _swap_figures(swaps, plain[1], plain_floor, "score")
    report.baselines["no cache"] = metrics_at(
        [Outcome(None, False)] * len(rows), rows, 1.0, answerable_queries=count
    )
    report.baselines["exact match"] = metrics_at(
        exact_outcomes(rows, labels), rows, 1.0, answerable_queries=count
    )
    if gptcache and gptcache_baseline.available():
        name = "GPTCache (default threshold)"
        gpt_pairs, gpt_swaps = _gptcache(rows, swaps, model, progress, labels)
        report.baselines[name] = metrics_at(gpt_pairs, rows, 1.0, answerable_queries=count)
        report.swaps[name] = _swap_figures(swaps, gpt_swaps, 1.0, "score")
    else:
        report.baselines["GPTCache (default threshold)"] = None
        report.notes.append(gptcache_baseline.skipped(gptcache))
    return report


def _run_pairs(
    cache: SemanticCache,
    rows: Sequence[PairRow],
    progress: bool,
    *,
    floor: float,
    labels: Labels,
) -> list[Outcome]:
    answers = len(set(row.a for row in rows))
    with tqdm(total=answers + len(rows), disable=bar_off(progress), desc="pairs", unit="q") as bar:
        return run_pairs(cache, rows, floor=floor, on_progress=bar.update, labels=labels)


def _run_swaps(
    cache: SemanticCache, swaps: Sequence[Swap], progress: bool, *, floor: float
) -> list[Outcome]:
    """Look up every variant in the cache that holds the originals."""
    with tqdm(total=len(swaps), disable=bar_off(progress), desc="swaps", unit="q") as bar:
        hits = lookups(cache, [s.variant for s in swaps], floor=floor, on_progress=bar.update)
    return [
        _swap_outcome(swap, None if hit is None else hit.response, hit)
        for swap, hit in zip(swaps, hits, strict=True)
    ]


def _swap_outcome(swap: Swap, answer: str | None, hit: Hit | None = None) -> Outcome:
    if answer is None:
        return Outcome(score=None, right=False)
    return Outcome(
        score=1.0 if hit is None else hit.score,
        right=normalize_prompt(answer) == normalize_prompt(swap.variant),
        confidence=None if hit is None else hit.confidence,
    )


def _swap_figures(
    swaps: Sequence[Swap], outcomes: Sequence[Outcome], threshold: float, by: str
) -> dict[str, Scores]:
    figures = {}
    for kind in ("all", *KINDS):
        chosen = [i for i, s in enumerate(swaps) if kind in ("all", s.kind)]
        if not chosen:
            continue
        rows = [
            PairRow(a=swaps[i].original, b=swaps[i].variant, duplicate=False, id=i) for i in chosen
        ]
        figures[kind] = metrics_at(
            [outcomes[i] for i in chosen], rows, threshold, by=by, answerable_queries=0
        )
    return figures


def _gptcache(
    rows: Sequence[PairRow],
    swaps: Sequence[Swap],
    model: str | None,
    progress: bool,
    labels: Labels,
) -> tuple[list[Outcome], list[Outcome]]:
    baseline = gptcache_baseline.GPTCacheBaseline(model)
    try:
        answers = list(dict.fromkeys(row.a for row in rows))
        baseline.put_many(answers, answers)
        outcomes = []
        for row in tqdm(rows, disable=bar_off(progress), desc="GPTCache", unit="q"):
            answer = baseline.get(row.b)
            outcomes.append(
                Outcome(score=None, right=False)
                if answer is None
                else Outcome(
                    score=1.0, right=labels.same(row.b, answer), judged=labels.known(row.b, answer)
                )
            )
        swap_outcomes = [
            _swap_outcome(swap, baseline.get(swap.variant))
            for swap in tqdm(swaps, disable=bar_off(progress), desc="GPTCache swaps", unit="q")
        ]
    finally:
        baseline.close()
    return outcomes, swap_outcomes
