"""Index maintenance never stops the world: retraining and checkpoints happen beside the
serving index, and a rebuild reads the store in one query."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from semcache import CacheRequest, SemanticCache
from semcache.index import Blob, FaissIndex, FaissMaker, Ids, ScopedIndex, VectorIndex, Vectors
from tests.conftest import WordHashEmbedder

DIM = 16


def unit(rows: int, seed: int) -> Vectors:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class GatedIndex(FaissIndex):
    """A FAISS index whose rebuild or serialisation waits for a gate, as a slow one would."""

    gate = threading.Event()
    entered = threading.Event()
    gate_rebuild = False
    gate_dump = False

    def rebuilt(self, ids: Ids, vectors: Vectors) -> VectorIndex:
        if GatedIndex.gate_rebuild:
            GatedIndex.entered.set()
            assert GatedIndex.gate.wait(10)
        return super().rebuilt(ids, vectors)

    def to_bytes(self) -> Blob:
        if GatedIndex.gate_dump:
            GatedIndex.entered.set()
            assert GatedIndex.gate.wait(10)
        return super().to_bytes()


class GatedMaker(FaissMaker):
    def __call__(self, dim: int) -> VectorIndex:
        return GatedIndex(dim, exact_max=self.exact_max, nprobe=self.nprobe)


def reset_gates(*, rebuild: bool = False, dump: bool = False) -> None:
    GatedIndex.gate = threading.Event()
    GatedIndex.entered = threading.Event()
    GatedIndex.gate_rebuild, GatedIndex.gate_dump = rebuild, dump


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_a_retrain_runs_beside_the_serving_index_and_keeps_the_changes_made_meanwhile() -> None:
    reset_gates(rebuild=True)
    index = ScopedIndex(DIM, exact_max=100, nprobe=8, maker=GatedMaker(exact_max=100, nprobe=8))
    index.add("other", np.arange(10_000, 10_010), unit(10, 1))
    vectors = unit(300, 2)
    index.add("big", np.arange(200), vectors[:200])  # outgrows its flat index: a retrain starts
    assert GatedIndex.entered.wait(5)
    # While k-means runs: both scopes answer, and changes land.
    started = time.monotonic()
    _, ids = index.search("other", unit(1, 1)[:1], 1)
    _, near = index.search("big", vectors[5:6], 1)
    index.add("big", np.arange(200, 300), vectors[200:])
    index.remove("big", [7])
    assert time.monotonic() - started < 1.0
    assert ids[0, 0] == 10_000 and near[0, 0] == 5
    assert index.describe() == {"flat": 2}
    GatedIndex.gate.set()
    index.wait_for_rebuilds(10)
    assert index.describe() == {"flat": 1, "ivf": 1} and index.rebuilds == 1
    assert index.size("big") == 299
    _, found = index.search("big", vectors[250:251], 1)
    _, removed = index.search("big", vectors[7:8], 1)
    assert found[0, 0] == 250 and removed[0, 0] != 7


def test_lookups_do_not_wait_while_a_checkpoint_serialises_the_index(tmp_path: Path) -> None:
    reset_gates()
    with SemanticCache(
        tmp_path, embedder=WordHashEmbedder(), index_maker=GatedMaker(), verifier=None
    ) as cache:
        cache.put_many([f"question {i} about topic {i}" for i in range(50)], list(range(50)))
        GatedIndex.gate_dump = True
        checkpoint, saved = in_thread(cache.checkpoint)
        assert GatedIndex.entered.wait(5)
        looked_up, decisions = in_thread(
            lambda: cache.lookup(CacheRequest(prompt="question 7 about topic 7 please"))
        )
        looked_up.join(5)
        assert decisions, "a lookup waited for the checkpoint"
        stored, ids = in_thread(lambda: cache.put("a new question elsewhere", 1, namespace="b"))
        stored.join(5)
        assert ids, "a store to another scope waited for the checkpoint"
        GatedIndex.gate_dump = False
        GatedIndex.gate.set()
        checkpoint.join(10)
        assert saved == [True]
    # The snapshot was taken before the last store: the next open notices and rebuilds.
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), verifier=None) as reopened:
        assert len(reopened) == 51
        assert reopened.get("a new question elsewhere", namespace="b") is not None


def test_a_rebuild_reads_the_store_in_one_query(tmp_path: Path) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), verifier=None) as cache:
        cache.put_many([f"question {i} about topic {i}" for i in range(300)], list(range(300)))
        for i in range(0, 300, 3):
            cache.get(f"question {i} about topic {i}")  # hit statistics: keys of their own
        store = cache._store
        statements: list[str] = []
        store._cache._con.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        try:
            entries = list(store.scan())
        finally:
            store._cache._con.set_trace_callback(None)  # type: ignore[attr-defined]
    assert len(entries) == 300 and [e.entry_id for e in entries] == sorted(  # type: ignore[union-attr]
        e.entry_id  # type: ignore[union-attr]
        for e in entries
    )
    assert sum(1 for e in entries if e.hits == 1) == 100  # type: ignore[union-attr]
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
