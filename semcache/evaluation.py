"""Measuring a cache on labelled paraphrase pairs: hit rate, precision of hits, recall.

The procedure (also the benchmark's "pair mode"): store every distinct ``a`` with itself as the
answer, look up every ``b``. A hit is right only when the row is a duplicate *and* the answer
served is that row's own ``a``; any other hit is a wrong answer served to a user.

A lookup at threshold ``t`` serves the first candidate, in descending similarity, that passes
the guards, provided its similarity is at least ``t``. So one pass at a low threshold gives the
outcome at every higher threshold: :func:`run_pairs` records the served candidate's similarity
and :func:`sweep` applies each threshold to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from semcache.cache import SemanticCache
from semcache.embedding import Embedder
from semcache.keys import normalize_prompt


@dataclass(frozen=True)
class PairRow:
    a: str
    b: str
    duplicate: bool
    id: int


@dataclass(frozen=True)
class Outcome:
    """The hit a query got at the lowest threshold swept, and whether it was right."""

    score: float | None  # similarity of the served candidate; None for a miss
    right: bool


@dataclass(frozen=True)
class Metrics:
    threshold: float
    queries: int
    duplicates: int
    hits: int
    right: int
    wrong: int
    hit_rate: float
    precision: float
    recall: float
    false_hit_rate: float
    f1: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def in_split(row_id: int, split: str | None) -> bool:
    """``test`` is the rows with ``id % 10 == 0``, ``train`` the rest, ``None`` all."""
    if split is None or split == "all":
        return True
    if split == "test":
        return row_id % 10 == 0
    if split == "train":
        return row_id % 10 != 0
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def load_pairs(
    path: Path, *, split: str | None = None, start: int = 0, limit: int | None = None
) -> list[PairRow]:
    """Rows of a ``pairs_*.jsonl`` file with ``start <= position``, in the split, at most
    ``limit`` of them."""
    rows = []
    with open(path, "rb") as file:
        for position, line in enumerate(file):
            if position < start:
                continue
            raw = orjson.loads(line)
            row = PairRow(
                a=raw["a"],
                b=raw["b"],
                duplicate=bool(raw["duplicate"]),
                id=int(raw.get("id", position)),
            )
            if in_split(row.id, split):
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def run_pairs(
    cache: SemanticCache,
    rows: Sequence[PairRow],
    *,
    floor: float,
    namespace: str = "pairs",
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 256,
) -> list[Outcome]:
    """Store every distinct ``a`` in ``cache`` (expected empty), look up every ``b`` at
    threshold ``floor``, ``chunk`` at a time; ``on_progress`` hears how many were done."""
    answers = list(dict.fromkeys(row.a for row in rows))
    for start in range(0, len(answers), chunk):
        part = answers[start : start + chunk]
        cache.put_many(part, part, namespace=namespace)
        if on_progress is not None:
            on_progress(len(part))
    outcomes: list[Outcome] = []
    for start in range(0, len(rows), chunk):
        batch = rows[start : start + chunk]
        hits = cache.get_many([r.b for r in batch], namespace=namespace, min_similarity=floor)
        for row, hit in zip(batch, hits, strict=True):
            right = hit is not None and row.duplicate and hit.response == row.a
            outcomes.append(Outcome(score=None if hit is None else hit.score, right=right))
        if on_progress is not None:
            on_progress(len(batch))
    return outcomes


def exact_outcomes(rows: Sequence[PairRow]) -> list[Outcome]:
    """An exact-match cache on the same rows: a hit only for a ``b`` equal to a stored ``a``
    after normalisation (case, spacing, trailing punctuation)."""
    stored: dict[str, str] = {}
    for row in rows:
        stored[normalize_prompt(row.a)] = row.a
    outcomes = []
    for row in rows:
        answer = stored.get(normalize_prompt(row.b))
        outcomes.append(
            Outcome(
                score=None if answer is None else 1.0,
                right=answer is not None and row.duplicate and answer == row.a,
            )
        )
    return outcomes


def metrics_at(outcomes: Sequence[Outcome], rows: Sequence[PairRow], threshold: float) -> Metrics:
    duplicates = sum(row.duplicate for row in rows)
    served = [o for o in outcomes if o.score is not None and o.score >= threshold]
    right = sum(o.right for o in served)
    hits = len(served)
    queries = len(outcomes)
    precision = right / hits if hits else 1.0
    recall = right / duplicates if duplicates else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(
        threshold=round(threshold, 4),
        queries=queries,
        duplicates=duplicates,
        hits=hits,
        right=right,
        wrong=hits - right,
        hit_rate=hits / queries if queries else 0.0,
        precision=precision,
        recall=recall,
        false_hit_rate=(hits - right) / queries if queries else 0.0,
        f1=f1,
    )


def sweep(
    outcomes: Sequence[Outcome], rows: Sequence[PairRow], thresholds: Iterable[float]
) -> list[Metrics]:
    return [metrics_at(outcomes, rows, t) for t in thresholds]


def f_beta(metrics: Metrics, beta: float) -> float:
    p, r = metrics.precision, metrics.recall
    return (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0


class PrecomputedEmbedder:
    """Wraps an embedder and remembers its vectors in memory and in an ``.npz`` file, so that
    repeated benchmark runs embed each text once. Measurements of the model's own speed must
    use the wrapped embedder."""

    def __init__(self, inner: Embedder, path: Path | None = None) -> None:
        self.inner = inner
        self.path = path
        self._vectors: dict[str, NDArray[np.float32]] = {}
        if path is not None and path.exists():
            with np.load(path) as data:
                for key, vector in zip(data["keys"], data["vectors"], strict=True):
                    self._vectors[str(key)] = vector

    @property
    def name(self) -> str:
        return self.inner.name

    def __getattr__(self, attribute: str) -> Any:
        # max_tokens and token_counts of a windowed embedder pass through.
        return getattr(self.inner, attribute)

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def prefill(self, texts: Sequence[str]) -> None:
        missing = list(dict.fromkeys(t for t in texts if self._key(t) not in self._vectors))
        if missing:
            vectors = self.inner.embed(missing)
            for text, vector in zip(missing, vectors, strict=True):
                self._vectors[self._key(text)] = vector
            self.save()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.prefill(texts)
        return np.stack([self._vectors[self._key(t)] for t in texts])

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._vectors), dtype="U32")
        vectors = np.stack(list(self._vectors.values())) if self._vectors else np.empty((0, 0))
        temporary = self.path.with_suffix(".tmp.npz")
        np.savez(temporary, keys=keys, vectors=vectors)
        temporary.replace(self.path)
