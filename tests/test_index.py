"""What the vector index keeps, and that no decision rests on the rounded scores it gives.

Above ``exact_max`` a scope's index holds its vectors in half precision (half the memory, half
the bytes scanned); the cache judges each candidate it examines by the cosine with the float32
vector stored in its entry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from numpy.typing import NDArray

from semcache import CacheRequest, SemanticCache
from semcache.index import SCORE_ERROR, FaissIndex, FaissMaker, VectorIndex, Vectors
from semcache.policy import Reason

DIM = 16


def unit(rows: int, seed: int) -> Vectors:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_an_ivf_index_holds_half_precision_codes_and_gives_its_vectors_back() -> None:
    vectors = unit(600, 1)
    ids = np.arange(1_000, 1_600, dtype=np.int64)
    flat = FaissIndex(DIM, exact_max=100, nprobe=64)
    flat.add(ids, vectors)
    assert flat.due()
    ivf = flat.rebuilt(*flat.contents())
    assert ivf.kind == "ivf" and len(ivf) == 600
    native: Any = ivf._index  # type: ignore[attr-defined]
    assert native.invlists.code_size == 2 * DIM  # half precision, not 4 bytes a component
    back_ids, back = ivf.contents()
    order = np.argsort(back_ids)
    assert np.array_equal(back_ids[order], ids)
    assert np.abs(back[order] - vectors).max() < 1e-3
    # Probing every list, each vector finds itself, at a score within SCORE_ERROR of 1.
    scores, found = ivf.search(vectors, 1)
    assert np.array_equal(found[:, 0], ids)
    assert np.abs(scores[:, 0] - 1.0).max() < SCORE_ERROR
    # Changes after the build, and a snapshot round trip.
    ivf.add(np.array([5], np.int64), unit(1, 2))
    assert ivf.remove(np.array([5, 1_000], np.int64)) == 2
    loaded = FaissIndex.from_bytes(
        ivf.to_bytes(), dim=DIM, trained_on=ivf.trained_on, exact_max=100, nprobe=64
    )
    assert np.array_equal(loaded.search(vectors[1:], 1)[1], found[1:])


def test_a_snapshot_of_a_float32_ivf_index_still_loads_and_rebuilds() -> None:
    """Snapshots written before the index went to half precision hold IndexIVFFlat."""
    vectors = unit(600, 3)
    ids = np.arange(600, dtype=np.int64)
    old = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, 8, faiss.METRIC_INNER_PRODUCT)
    old.train(vectors)
    old.add_with_ids(vectors, ids)
    data = faiss.serialize_index(old).data
    loaded = FaissIndex.from_bytes(data, dim=DIM, trained_on=600, exact_max=100, nprobe=8)
    back_ids, back = loaded.contents()
    order = np.argsort(back_ids)
    assert np.array_equal(back[order], vectors)  # float32 codes come back exactly
    assert np.array_equal(loaded.search(vectors, 1)[1][:, 0], ids)


class ShiftedIndex(FaissIndex):
    """An index whose scores are off by ``shift``, as rounded ones may be."""

    shift = 0.0

    def search(self, vectors: Vectors, k: int) -> tuple[Vectors, NDArray[np.int64]]:
        scores, ids = super().search(vectors, k)
        return scores + np.float32(ShiftedIndex.shift), ids


class ShiftedMaker(FaissMaker):
    def __call__(self, dim: int) -> VectorIndex:
        return ShiftedIndex(dim, exact_max=self.exact_max, nprobe=self.nprobe)


class FixedEmbedder:
    """Each text's vector is given."""

    name = "fixed"

    def __init__(self, vectors: dict[str, Vectors]) -> None:
        self.vectors = vectors

    def embed(self, texts: Sequence[str]) -> Vectors:
        return np.stack([self.vectors[text] for text in texts]).astype(np.float32)


def at_cosine(base: Vectors, cosine: float, seed: int) -> Vectors:
    """A unit vector at exactly ``cosine`` to the unit vector ``base``."""
    other = unit(1, seed)[0]
    other -= other.dot(base) * base
    other /= np.linalg.norm(other)
    return np.asarray(cosine * base + np.sqrt(1 - cosine**2) * other, np.float32)


@pytest.mark.parametrize(
    ("exact", "shift", "hit"),
    [
        (0.9005, -1.5e-3, True),  # the index says 0.899: still examined, and served
        (0.8995, +1.5e-3, False),  # the index says 0.901: the stored vector says no
    ],
)
def test_a_candidate_is_judged_by_its_stored_vector_not_the_index_score(
    tmp_path: Path, exact: float, shift: float, hit: bool
) -> None:
    stored = unit(1, 10)[0]
    asked = at_cosine(stored, exact, 11)
    embedder = FixedEmbedder({"how do I reset my password": stored, "asked again": asked})
    ShiftedIndex.shift = shift
    cache = SemanticCache(
        tmp_path,
        embedder=embedder,
        verifier=None,
        guards=False,
        min_similarity=0.9,
        index_maker=ShiftedMaker(),
    )
    try:
        cache.put("how do I reset my password", {"answer": 1})
        decision = cache.lookup(CacheRequest(prompt="asked again"))
        assert (decision.hit is not None) is hit
        assert decision.score == pytest.approx(exact, abs=1e-5)
        if not hit:
            assert decision.reason is Reason.BELOW_THRESHOLD
    finally:
        cache.close()
        ShiftedIndex.shift = 0.0
