"""Vector search per scope, on FAISS.

Each scope has its own index, so a lookup can only ever return entries of its own scope, and a
small scope (a tenant, a system prompt) is searched exactly whatever the size of the others.
A scope starts as an exact inner-product index (``IndexFlatIP``) and moves to an IVF index once
it holds more than ``exact_max`` vectors; the benchmark reports the recall this costs. The IVF
index keeps its vectors in half precision: half the memory, and a search scans half the bytes.
Its scores are then off by up to ``SCORE_ERROR``; the cache rescores the candidates it examines
with their stored float32 vectors, so no decision rests on a rounded score. Ids are the store's
entry ids, so they stay stable across restarts and rebuilds.

FAISS indexes are not safe for a search concurrent with an add or a remove: each scope has a
read-write lock (searches share it, changes take it alone), and retraining happens beside the
serving index, never under its lock (see :class:`ScopedIndex`).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import faiss
import numpy as np
from numpy.typing import NDArray

from semcache.errors import StoreError

logger = logging.getLogger("semcache")

Vectors = NDArray[np.float32]
Ids = NDArray[np.int64]
Blob = bytes | memoryview  # a serialised index, not copied on its way to or from a file


class VectorIndex(Protocol):
    """One scope's inner-product search over unit vectors, with caller-chosen integer ids, and
    what a snapshot needs of it. :class:`FaissIndex` is the one in use; another backend (a
    vector-search server, say) implements this and a :class:`IndexMaker`."""

    def add(self, ids: Ids, vectors: Vectors) -> None: ...

    def remove(self, ids: Ids) -> int: ...

    def search(self, vectors: Vectors, k: int) -> tuple[Vectors, Ids]: ...

    def __len__(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def trained_on(self) -> int: ...

    def to_bytes(self) -> Blob: ...

    def due(self) -> bool:
        """Whether the index should be rebuilt for its present size."""
        ...

    def contents(self) -> tuple[Ids, Vectors]: ...

    def rebuilt(self, ids: Ids, vectors: Vectors) -> VectorIndex:
        """A new index holding these contents (made off every lock: it may take minutes)."""
        ...


class IndexMaker(Protocol):
    """Makes the :class:`VectorIndex` of a new scope, or loads one from a snapshot."""

    def __call__(self, dim: int) -> VectorIndex: ...

    def load(self, data: Blob, *, dim: int, trained_on: int) -> VectorIndex: ...


class FaissIndex:
    """One scope's vectors: exact up to ``exact_max`` vectors, IVF above it.

    Adding and removing never retrain: :meth:`due` says when the index no longer fits its size,
    and :meth:`rebuilt` makes the one that does, from a copy of the contents, while this one
    keeps serving (see :class:`ScopedIndex`).
    """

    def __init__(self, dim: int, *, exact_max: int = 50_000, nprobe: int = 16) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self.nprobe = nprobe
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._trained_on = 0  # vectors the IVF centroids were trained on; 0 while flat

    @property
    def kind(self) -> str:
        return "ivf" if self._trained_on else "flat"

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        if len(ids) == 0:
            return
        self._index.add_with_ids(_as_vectors(vectors, self.dim), _as_ids(ids))

    def remove(self, ids: Ids) -> int:
        if len(ids) == 0:
            return 0
        return int(self._index.remove_ids(_as_ids(ids)))

    def due(self) -> bool:
        """Whether the index should be rebuilt for its size: flat above ``exact_max``; IVF at
        4× the vectors its centroids were trained on (they no longer split the data evenly),
        or below ``exact_max / 2`` (exact search is then cheap)."""
        n = len(self)
        if not self._trained_on:
            return n > self.exact_max
        return n > 4 * self._trained_on or n < self.exact_max // 2

    def rebuilt(self, ids: Ids, vectors: Vectors) -> VectorIndex:
        """A new index of these contents, of the kind their number calls for."""
        index = FaissIndex(self.dim, exact_max=self.exact_max, nprobe=self.nprobe)
        if len(ids) <= self.exact_max:
            index.add(ids, vectors)
            return index
        index._index = _trained_ivf(vectors, self.dim, self.nprobe)
        _fill(index._index, _as_ids(ids), _as_vectors(vectors, self.dim))
        index._trained_on = len(ids)
        return index

    def search(self, vectors: Vectors, k: int) -> tuple[Vectors, Ids]:
        vectors = _as_vectors(vectors, self.dim)
        scores, ids = self._index.search(vectors, k)
        return scores, ids

    def contents(self) -> tuple[Ids, Vectors]:
        """Every id and its vector, in no particular order."""
        if not self._trained_on:
            n = len(self)
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            vectors = self._index.index.reconstruct_n(0, n) if n else np.empty((0, self.dim))
            return ids, np.asarray(vectors, np.float32).reshape(n, self.dim)
        invlists = self._index.invlists
        id_parts, vector_parts = [], []
        for list_no in range(self._index.nlist):
            size = invlists.list_size(list_no)
            if size == 0:
                continue
            id_parts.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * invlists.code_size)
            vector_parts.append(_decoded(codes, invlists.code_size, self.dim).reshape(size, -1))
        if not id_parts:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        return np.concatenate(id_parts).astype(np.int64), np.concatenate(vector_parts)

    def to_bytes(self) -> Blob:
        serialised: NDArray[np.uint8] = faiss.serialize_index(self._index)
        return serialised.data

    @classmethod
    def from_bytes(
        cls, data: Blob, *, dim: int, trained_on: int, exact_max: int, nprobe: int
    ) -> FaissIndex:
        """Raises StoreError when ``data`` is not a FAISS index of dimension ``dim``."""
        try:
            index: Any = faiss.deserialize_index(np.frombuffer(data, np.uint8))
        except RuntimeError as exc:
            raise StoreError(f"unreadable FAISS index: {exc}") from exc
        if index.d != dim:
            raise StoreError(f"FAISS index has dimension {index.d}, expected {dim}")
        self = cls(dim, exact_max=exact_max, nprobe=nprobe)
        self._index = index
        self._trained_on = trained_on
        if trained_on:
            index.nprobe = nprobe
        return self

    @property
    def trained_on(self) -> int:
        return self._trained_on


SCORE_ERROR = 2e-3  # most a half-precision IVF score can be off from the float32 cosine
REBUILD_NICENESS = 10  # added to a rebuild thread's niceness: k-means yields to lookups
TRAINING_POINTS_PER_LIST = 64  # k-means sample per inverted list (FAISS asks at least 39)


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: about sqrt(n), so that a probe of ``nprobe`` lists
    scans about ``nprobe * sqrt(n)`` vectors, with enough training points per list."""
    return max(1, min(int(math.sqrt(n)), n // 39))


def _trained_ivf(vectors: Vectors, dim: int, nprobe: int) -> Any:
    n = len(vectors)
    nlist = ivf_lists(n)
    sample = vectors
    if n > TRAINING_POINTS_PER_LIST * nlist:
        rows = np.random.default_rng(n).choice(n, TRAINING_POINTS_PER_LIST * nlist, replace=False)
        sample = vectors[np.sort(rows)]
    quantizer = faiss.IndexFlatIP(dim)
    # Half precision, and the vectors themselves rather than residuals from their centroid:
    # each component is kept to within 2**-10 of its value, so the cosine of two unit vectors
    # moves by at most 2**-10 (under SCORE_ERROR), and a code decodes back to its vector alone
    # (contents()).
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
    )
    index.train(np.ascontiguousarray(sample))
    index.nprobe = nprobe
    return index


def _fill(index: Any, ids: Ids, vectors: Vectors) -> None:
    """Add ``vectors`` to the empty IVF ``index`` one inverted list at a time, each list
    allocated at its size. (``add_with_ids`` appends vector by vector, and each list's buffer
    doubles as it grows: about a third of the memory went unused.)"""
    _, assigned = index.quantizer.search(vectors, 1)
    lists = assigned[:, 0]
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(index.nlist + 1))
    invlists = index.invlists
    for list_no in range(index.nlist):
        rows = order[bounds[list_no] : bounds[list_no + 1]]
        if len(rows) == 0:
            continue
        part = np.ascontiguousarray(vectors[rows])
        codes = np.ascontiguousarray(index.sq.compute_codes(part))
        part_ids = np.ascontiguousarray(ids[rows])
        invlists.add_entries(list_no, len(rows), faiss.swig_ptr(part_ids), faiss.swig_ptr(codes))
    index.ntotal = len(ids)


def _decoded(codes: NDArray[np.uint8], code_size: int, dim: int) -> Vectors:
    """The vectors of an inverted list's codes: float32 (an index of an earlier version, or
    one loaded from its snapshot) or half precision."""
    if code_size == 4 * dim:
        return codes.view(np.float32).copy()
    if code_size == 2 * dim:
        return codes.view(np.float16).astype(np.float32)
    raise StoreError(f"inverted list codes of {code_size} bytes for dimension {dim}")


class FaissMaker:
    """Makes :class:`FaissIndex` es."""

    def __init__(self, *, exact_max: int = 50_000, nprobe: int = 16) -> None:
        self.exact_max = exact_max
        self.nprobe = nprobe

    def __call__(self, dim: int) -> VectorIndex:
        return FaissIndex(dim, exact_max=self.exact_max, nprobe=self.nprobe)

    def load(self, data: Blob, *, dim: int, trained_on: int) -> VectorIndex:
        return FaissIndex.from_bytes(
            data, dim=dim, trained_on=trained_on, exact_max=self.exact_max, nprobe=self.nprobe
        )


class _ReadWriteLock:
    """Many readers at once, or one writer; a waiting writer holds new readers back, so a
    stream of searches cannot starve a store."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


# (ids, their vectors) for an add, (ids, None) for a remove: made while a rebuild ran
Change = tuple[Ids, Vectors | None]


class _Scope:
    """One scope's index, its lock, and the changes a rebuild in progress must replay."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.lock = _ReadWriteLock()
        self.rebuilding = False
        self.changes: list[Change] | None = None


class ScopedIndex:
    """A :class:`VectorIndex` per scope, each behind a lock of its own.

    Searches of a scope run side by side (FAISS searches are read-only) and wait only for an
    add or a remove on the same scope. When a scope's index no longer fits its size
    (:meth:`FaissIndex.due`), it is rebuilt on a background thread from a copy of its
    contents while the old one serves; the changes made meanwhile are replayed on the new one,
    which is then swapped in. Nothing waits for k-means: not a search of that scope, not a
    search of another, not a store.

    ``dim`` may be left unset until the first vectors arrive, so opening an empty cache does
    not need the model.
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        exact_max: int = 50_000,
        nprobe: int = 16,
        maker: IndexMaker | None = None,
    ) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self.nprobe = nprobe
        self.maker: IndexMaker = maker or FaissMaker(exact_max=exact_max, nprobe=nprobe)
        self._scopes: dict[str, _Scope] = {}
        self._lock = threading.Lock()  # the dictionary of scopes only
        self._rebuilds: list[threading.Thread] = []
        self._one_rebuild = threading.Lock()  # k-means is CPU-bound: one at a time
        self.rebuilds = 0  # rebuilds swapped in since this object was made

    def __len__(self) -> int:
        with self._lock:
            scopes = list(self._scopes.values())
        return sum(len(s.index) for s in scopes)

    def size(self, scope: str) -> int:
        with self._lock:
            found = self._scopes.get(scope)
        return 0 if found is None else len(found.index)

    def add(self, scope: str, ids: Ids, vectors: Vectors) -> None:
        with self._lock:
            if self.dim is None:
                self.dim = int(vectors.shape[1])
            found = self._scopes.get(scope)
            if found is None:
                found = self._scopes[scope] = _Scope(self.maker(self.dim))
        with found.lock.writing():
            found.index.add(ids, vectors)
            if found.changes is not None:
                found.changes.append((np.array(ids, np.int64), np.array(vectors)))
        self._maybe_rebuild(scope, found)

    def remove(self, scope: str, ids: Iterable[int]) -> int:
        with self._lock:
            found = self._scopes.get(scope)
        if found is None:
            return 0
        doomed = np.fromiter(ids, np.int64)
        with found.lock.writing():
            removed = found.index.remove(doomed)
            if found.changes is not None:
                found.changes.append((doomed, None))
            empty = len(found.index) == 0
        if empty:
            with self._lock:
                if self._scopes.get(scope) is found and len(found.index) == 0:
                    del self._scopes[scope]
        else:
            self._maybe_rebuild(scope, found)
        return removed

    def drop(self, scope: str) -> None:
        with self._lock:
            self._scopes.pop(scope, None)

    def search(self, scope: str, vectors: Vectors, k: int) -> tuple[Vectors, Ids]:
        """Top ``k`` ids and cosine scores per query row; missing slots have id -1."""
        with self._lock:
            found = self._scopes.get(scope)
        if found is None:
            n = len(vectors)
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        with found.lock.reading():
            return found.index.search(vectors, k)

    def describe(self) -> dict[str, int]:
        """How many scopes use each kind of index."""
        with self._lock:
            scopes = list(self._scopes.values())
        kinds: dict[str, int] = {}
        for found in scopes:
            kinds[found.index.kind] = kinds.get(found.index.kind, 0) + 1
        return kinds

    def dump(self) -> dict[str, tuple[int, Blob]]:
        """Each scope's ``(trained_on, serialized index)``, for a snapshot. Each scope is
        serialised under its read lock: searches go on, its stores wait."""
        with self._lock:
            scopes = dict(self._scopes)
        dumped = {}
        for name, found in scopes.items():
            with found.lock.reading():
                dumped[name] = (found.index.trained_on, found.index.to_bytes())
        return dumped

    def restore(self, dumped: Mapping[str, tuple[int, Blob]]) -> None:
        """Replace the contents with a :meth:`dump`; raises StoreError if any part is bad."""
        if self.dim is None:
            raise StoreError("cannot restore an index whose dimension is unknown")
        dim = self.dim
        scopes = {
            scope: _Scope(self.maker.load(data, dim=dim, trained_on=trained_on))
            for scope, (trained_on, data) in dumped.items()
        }
        with self._lock:
            self._scopes = scopes
        for name, found in scopes.items():
            self._maybe_rebuild(name, found)

    def wait_for_rebuilds(self, timeout_s: float | None = None) -> None:
        """Return when no rebuild is running (tests, benchmarks, and a clean close)."""
        with self._lock:
            threads = list(self._rebuilds)
        for thread in threads:
            thread.join(timeout_s)

    def _maybe_rebuild(self, name: str, found: _Scope) -> None:
        if found.rebuilding or not found.index.due():
            return
        found.rebuilding = True
        thread = threading.Thread(
            target=self._rebuild, args=(name, found), name="semcache-index", daemon=True
        )
        with self._lock:
            self._rebuilds = [t for t in self._rebuilds if t.is_alive()] + [thread]
        thread.start()

    def _rebuild(self, name: str, found: _Scope) -> None:
        _lower_this_threads_priority()
        try:
            with self._one_rebuild:
                with found.lock.reading():  # searches go on while the contents are copied
                    old = found.index
                    ids, vectors = old.contents()
                    found.changes = []
                new = old.rebuilt(ids, vectors)
                del ids, vectors
                with found.lock.writing():
                    for changed, changed_vectors in found.changes:
                        if changed_vectors is not None:  # ids are never reused
                            new.add(changed, changed_vectors)
                        else:
                            new.remove(changed)
                    found.index = new
                    found.changes = None
                    self.rebuilds += 1
                del old, new
                _return_freed_memory()
        except Exception:
            logger.exception("rebuilding the index of a scope failed; the old one serves on")
            found.changes = None
        finally:
            found.rebuilding = False
        with self._lock:
            current = self._scopes.get(name) is found
        if current:
            self._maybe_rebuild(name, found)


def _lower_this_threads_priority() -> None:
    """Let lookups have the cores before a rebuild does (on Linux a thread has a niceness of
    its own; elsewhere this does nothing)."""
    with suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REBUILD_NICENESS)


def _return_freed_memory() -> None:
    """Hand the memory freed by a swapped-out index (and the rebuild's copies) back to the
    system. glibc keeps freed heap pages for reuse, and an index's inverted lists are blocks
    under its mmap threshold: without this, each rebuild left the process the size of an index
    larger. Elsewhere than glibc this does nothing."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _as_vectors(vectors: Vectors, dim: int) -> Vectors:
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {array.shape}")
    return array


def _as_ids(ids: Ids) -> Ids:
    return np.ascontiguousarray(ids, dtype=np.int64)
