"""Vector search per scope, on FAISS.

Each scope has its own index, so a lookup can only ever return entries of its own scope, and a
small scope (a tenant, a system prompt) is searched exactly whatever the size of the others.
A scope starts as an exact inner-product index (``IndexFlatIP``) and moves to an IVF index once
it holds more than ``exact_max`` vectors; the benchmark reports the recall this costs. Ids are the
store's entry ids, so they stay stable across restarts and rebuilds.

FAISS indexes are not safe for a search concurrent with an add or a remove, so every call goes
through one lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import faiss
import numpy as np
from numpy.typing import NDArray

from semcache.errors import StoreError

Vectors = NDArray[np.float32]
Ids = NDArray[np.int64]


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

    def to_bytes(self) -> bytes: ...


class IndexMaker(Protocol):
    """Makes the :class:`VectorIndex` of a new scope, or loads one from a snapshot."""

    def __call__(self, dim: int) -> VectorIndex: ...

    def load(self, data: bytes, *, dim: int, trained_on: int) -> VectorIndex: ...


class FaissIndex:
    """One scope's vectors: exact up to ``exact_max`` vectors, IVF above it."""

    def __init__(self, dim: int, *, exact_max: int = 50_000, nprobe: int = 32) -> None:
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
        if self._trained_on == 0 and len(self) > self.exact_max:
            self._rebuild_ivf()
        elif self._trained_on and len(self) > 4 * self._trained_on:
            # Centroids trained on a quarter of the data no longer split it evenly.
            self._rebuild_ivf()

    def remove(self, ids: Ids) -> int:
        if len(ids) == 0:
            return 0
        removed = int(self._index.remove_ids(_as_ids(ids)))
        if self._trained_on and len(self) < self.exact_max // 2:
            self._rebuild_flat()
        return removed

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
            id_parts.append(np.array(faiss.rev_swig_ptr(invlists.get_ids(list_no), size)))
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * invlists.code_size)
            vector_parts.append(np.frombuffer(bytes(codes), np.float32).reshape(size, self.dim))
        if not id_parts:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        return np.concatenate(id_parts).astype(np.int64), np.concatenate(vector_parts)

    def _rebuild_ivf(self) -> None:
        ids, vectors = self.contents()
        n = len(ids)
        # ~4·sqrt(n) lists, with at least 39 training points per centroid as FAISS asks.
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.add_with_ids(vectors, ids)
        index.nprobe = self.nprobe
        self._index = index
        self._trained_on = n

    def _rebuild_flat(self) -> None:
        ids, vectors = self.contents()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self._index.add_with_ids(vectors, ids)
        self._trained_on = 0

    def to_bytes(self) -> bytes:
        return bytes(faiss.serialize_index(self._index))

    @classmethod
    def from_bytes(
        cls, data: bytes, *, dim: int, trained_on: int, exact_max: int, nprobe: int
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


class FaissMaker:
    """Makes :class:`FaissIndex` es."""

    def __init__(self, *, exact_max: int = 50_000, nprobe: int = 32) -> None:
        self.exact_max = exact_max
        self.nprobe = nprobe

    def __call__(self, dim: int) -> VectorIndex:
        return FaissIndex(dim, exact_max=self.exact_max, nprobe=self.nprobe)

    def load(self, data: bytes, *, dim: int, trained_on: int) -> VectorIndex:
        return FaissIndex.from_bytes(
            data, dim=dim, trained_on=trained_on, exact_max=self.exact_max, nprobe=self.nprobe
        )


class ScopedIndex:
    """A :class:`VectorIndex` per scope behind one lock.

    ``dim`` may be left unset until the first vectors arrive, so opening an empty cache does
    not need the model.
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        exact_max: int = 50_000,
        nprobe: int = 32,
        maker: IndexMaker | None = None,
    ) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self.nprobe = nprobe
        self.maker: IndexMaker = maker or FaissMaker(exact_max=exact_max, nprobe=nprobe)
        self._scopes: dict[str, VectorIndex] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(index) for index in self._scopes.values())

    def size(self, scope: str) -> int:
        with self._lock:
            index = self._scopes.get(scope)
            return 0 if index is None else len(index)

    def add(self, scope: str, ids: Ids, vectors: Vectors) -> None:
        with self._lock:
            if self.dim is None:
                self.dim = int(vectors.shape[1])
            index = self._scopes.get(scope)
            if index is None:
                index = self._scopes[scope] = self.maker(self.dim)
            index.add(ids, vectors)

    def remove(self, scope: str, ids: Iterable[int]) -> int:
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                return 0
            removed = index.remove(np.fromiter(ids, np.int64))
            if len(index) == 0:
                del self._scopes[scope]
            return removed

    def drop(self, scope: str) -> None:
        with self._lock:
            self._scopes.pop(scope, None)

    def search(self, scope: str, vectors: Vectors, k: int) -> tuple[Vectors, Ids]:
        """Top ``k`` ids and cosine scores per query row; missing slots have id -1."""
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                n = len(vectors)
                return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
            return index.search(vectors, k)

    def describe(self) -> dict[str, int]:
        """How many scopes use each kind of index."""
        with self._lock:
            kinds: dict[str, int] = {}
            for index in self._scopes.values():
                kinds[index.kind] = kinds.get(index.kind, 0) + 1
            return kinds

    def dump(self) -> dict[str, tuple[int, bytes]]:
        """Each scope's ``(trained_on, serialized index)``, for a snapshot."""
        with self._lock:
            return {s: (i.trained_on, i.to_bytes()) for s, i in self._scopes.items()}

    def restore(self, dumped: Mapping[str, tuple[int, bytes]]) -> None:
        """Replace the contents with a :meth:`dump`; raises StoreError if any part is bad."""
        if self.dim is None:
            raise StoreError("cannot restore an index whose dimension is unknown")
        dim = self.dim
        scopes = {
            scope: self.maker.load(data, dim=dim, trained_on=trained_on)
            for scope, (trained_on, data) in dumped.items()
        }
        with self._lock:
            self._scopes = scopes


def _as_vectors(vectors: Vectors, dim: int) -> Vectors:
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {array.shape}")
    return array


def _as_ids(ids: Ids) -> Ids:
    return np.ascontiguousarray(ids, dtype=np.int64)
