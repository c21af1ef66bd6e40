"""Measuring a cache on labelled paraphrase pairs: hit rate, precision of hits, recall.

The procedure (also the benchmark's "pair mode"): store every distinct ``a`` with itself as the
answer, look up every ``b``. Whether a hit is right is read from the labels (:class:`Labels`;
the bench judges with every row of the file, train and test): the answer served is right when
the labels join the two questions, directly (the row's own ``a`` on a duplicate row) or through
a chain of rows labelled duplicate, and no row labels that very pair a non-duplicate. QQP
repeats popular questions across rows, so the answer stored for another ``a`` is often the
right one. A hit on a pair no row labels is
*unjudged* and counted wrong, so ``precision`` is a lower bound; ``precision_judged`` leaves the
unjudged out. Recall is over the queries whose question has some stored answer.

One pass gives the outcome at every operating point. Without a verifier a lookup at threshold
``t`` serves the first candidate, in descending similarity, that passes the guards, provided
its similarity is at least ``t``: :func:`run_pairs` records the served candidate's similarity
at a low threshold and :func:`sweep` applies each threshold. With a verifier the most probable
candidate is served when its probability reaches ``min_confidence``, so the pass records that
probability at ``min_confidence`` 0 and the sweep is over ``min_confidence``.
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
from semcache.decision import Hit
from semcache.embedding import Embedder
from semcache.keys import CacheRequest, normalize_prompt


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
    judged: bool = True  # whether the labels say anything about the pair served
    confidence: float | None = None  # the verifier's probability; None when none ran

    def key(self, by: str) -> float | None:
        return self.score if by == "score" or self.score is None else self.confidence


class Labels:
    """What labelled rows say about two questions: joined by duplicate labels (transitively),
    or labelled non-duplicate. Texts are compared after normalisation."""

    def __init__(self, rows: Iterable[PairRow]) -> None:
        self._parent: dict[str, str] = {}
        self._negative: set[tuple[str, str]] = set()
        for row in rows:
            a, b = normalize_prompt(row.a), normalize_prompt(row.b)
            if row.duplicate:
                self._parent[self._find(a)] = self._find(b)
            else:
                self._negative.add((a, b))
                self._negative.add((b, a))

    def _find(self, text: str) -> str:
        root = text
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while text != root:  # path compression
            self._parent[text], text = root, self._parent[text]
        return root

    def same(self, query: str, answer: str) -> bool:
        """The labels say one answer serves both."""
        q, a = normalize_prompt(query), normalize_prompt(answer)
        return (q, a) not in self._negative and self._find(q) == self._find(a)

    def known(self, query: str, answer: str) -> bool:
        """The labels say something about this pair, either way."""
        q, a = normalize_prompt(query), normalize_prompt(answer)
        return (q, a) in self._negative or self._find(q) == self._find(a)

    def answerable(self, queries: Iterable[str], answers: Iterable[str]) -> int:
        """How many of ``queries`` have a right answer among ``answers``."""
        groups = {self._find(normalize_prompt(a)) for a in answers}
        return sum(self._find(normalize_prompt(q)) in groups for q in queries)


@dataclass(frozen=True)
class Scores:
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
    unjudged: int = 0  # wrong hits that no label covers (counted wrong above)
    precision_judged: float = 1.0  # right / (hits - unjudged)
    answerable: int = 0  # queries with a right answer stored (recall's denominator)

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
    labels: Labels | None = None,
) -> list[Outcome]:
    """Store every distinct ``a`` in ``cache`` (expected empty), look up every ``b`` at
    threshold ``floor`` (and ``min_confidence`` 0 when the cache has a verifier), ``chunk`` at a
    time; ``on_progress`` hears how many were done. ``labels`` judge the hits (default: those
    of ``rows``)."""
    labels = labels or Labels(rows)
    answers = list(dict.fromkeys(row.a for row in rows))
    for start in range(0, len(answers), chunk):
        part = answers[start : start + chunk]
        cache.put_many(part, part, namespace=namespace)
        if on_progress is not None:
            on_progress(len(part))
    hits = lookups(
        cache, [row.b for row in rows], floor=floor, namespace=namespace, on_progress=on_progress
    )
    return [
        Outcome(score=None, right=False)
        if hit is None
        else Outcome(
            score=hit.score,
            right=labels.same(row.b, hit.response),
            judged=labels.known(row.b, hit.response),
            confidence=hit.confidence,
        )
        for row, hit in zip(rows, hits, strict=True)
    ]


def lookups(
    cache: SemanticCache,
    queries: Sequence[str],
    *,
    floor: float,
    namespace: str = "pairs",
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 256,
) -> list[Hit | None]:
    """Look up ``queries`` at similarity ``floor`` and, with a verifier, ``min_confidence`` 0,
    so that the outcome at any stricter setting can be read from the hits."""
    min_confidence = None if cache.verifier is None else 0.0
    hits: list[Hit | None] = []
    for start in range(0, len(queries), chunk):
        batch = queries[start : start + chunk]
        requests = [
            CacheRequest(
                prompt=q, namespace=namespace, min_similarity=floor, min_confidence=min_confidence
            )
            for q in batch
        ]
        hits.extend(decision.hit for decision in cache.lookup_many(requests))
        if on_progress is not None:
            on_progress(len(batch))
    return hits


def exact_outcomes(rows: Sequence[PairRow], labels: Labels | None = None) -> list[Outcome]:
    """An exact-match cache on the same rows: a hit only for a ``b`` equal to a stored ``a``
    after normalisation (case, spacing, trailing punctuation)."""
    labels = labels or Labels(rows)
    stored: dict[str, str] = {}
    for row in rows:
        stored[normalize_prompt(row.a)] = row.a
    outcomes = []
    for row in rows:
        answer = stored.get(normalize_prompt(row.b))
        if answer is None:
            outcomes.append(Outcome(score=None, right=False))
        else:
            outcomes.append(Outcome(score=1.0, right=labels.same(row.b, answer)))
    return outcomes


def answerable(rows: Sequence[PairRow]) -> int:
    """Queries (``b``) of ``rows`` whose right answer is among the stored ``a``."""
    return Labels(rows).answerable((r.b for r in rows), (r.a for r in rows))


def metrics_at(
    outcomes: Sequence[Outcome],
    rows: Sequence[PairRow],
    threshold: float,
    *,
    by: str = "score",
    answerable_queries: int | None = None,
) -> Scores:
    """The figures when hits need ``threshold`` on ``by`` (``"score"``: similarity,
    ``"confidence"``: the verifier's probability). Pass ``answerable_queries`` (from
    :func:`answerable`) when sweeping, to count it once."""
    if answerable_queries is None:
        answerable_queries = answerable(rows)
    served = [o for o in outcomes if (key := o.key(by)) is not None and key >= threshold]
    right = sum(o.right for o in served)
    unjudged = sum(not o.right and not o.judged for o in served)
    hits = len(served)
    queries = len(outcomes)
    precision = right / hits if hits else 1.0
    recall = right / answerable_queries if answerable_queries else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(
        threshold=round(threshold, 4),
        queries=queries,
        duplicates=sum(row.duplicate for row in rows),
        hits=hits,
        right=right,
        wrong=hits - right,
        hit_rate=hits / queries if queries else 0.0,
        precision=precision,
        recall=recall,
        false_hit_rate=(hits - right) / queries if queries else 0.0,
        f1=f1,
        unjudged=unjudged,
        precision_judged=right / (hits - unjudged) if hits > unjudged else 1.0,
        answerable=answerable_queries,
    )


def metrics_at_defaults(
    cache: SemanticCache, outcomes: Sequence[Outcome], rows: Sequence[PairRow]
) -> Scores:
    """The figures at ``cache``'s own settings, from outcomes of :func:`run_pairs` on it."""
    if cache.min_confidence is None:
        return metrics_at(outcomes, rows, cache.min_similarity)
    return metrics_at(outcomes, rows, cache.min_confidence, by="confidence")


def sweep(
    outcomes: Sequence[Outcome],
    rows: Sequence[PairRow],
    thresholds: Iterable[float],
    *,
    by: str = "score",
    answerable_queries: int | None = None,
) -> list[Scores]:
    """:func:`metrics_at` for each threshold, the answerable queries counted once."""
    count = answerable(rows) if answerable_queries is None else answerable_queries
    return [metrics_at(outcomes, rows, t, by=by, answerable_queries=count) for t in thresholds]


def f_beta(metrics: Scores, beta: float) -> float:
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
        # max_tokens and read() of a reading embedder pass through.
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
