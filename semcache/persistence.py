"""Keeping the derived state across restarts: a snapshot of the catalog and the indexes,
checked against the store's version, or a rebuild from the store when the snapshot is missing,
stale or damaged (re-embedding the entries of another model, dropping corrupt and expired ones).
The store stays the source of truth; nothing here is needed to lose no entry.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from semcache.derived import DerivedState
from semcache.entries import Entry, EntryStore
from semcache.errors import CorruptEntryError, StoreError
from semcache.index import ScopedIndex
from semcache.snapshot import Snapshot, read_snapshot, write_snapshot
from semcache.vectors import Vectors

logger = logging.getLogger("semcache")


class Persistence:
    def __init__(
        self,
        path: Path,
        store: EntryStore,
        vectors: Vectors,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.store = store
        self.vectors = vectors
        self.clock = clock

    def load(self, empty: DerivedState, counters: Counter[str]) -> tuple[DerivedState, int]:
        """The derived state of the store, and the store version its snapshot holds (-1 when
        none was read). ``empty`` is filled on a rebuild; ``counters`` count what a rebuild
        repaired."""
        if self.store.version == 0:
            return empty, -1  # a new store: nothing to load or rebuild
        template = empty.index
        try:
            snapshot = read_snapshot(self.path)
            if snapshot.store_version != self.store.version:
                raise StoreError("the store changed after the snapshot was written")
            if snapshot.embedder != self.vectors.name:
                raise StoreError(f"the snapshot was made with {snapshot.embedder!r}")
            index = ScopedIndex(
                snapshot.dim,
                exact_max=template.exact_max,
                nprobe=template.nprobe,
                maker=template.maker,
            )
            index.restore(snapshot.indexes)
        except StoreError as exc:
            logger.info("rebuilding the index from the store: %s", exc)
            self.rebuild(empty, counters)
            # Not saved here: the cache serves now and saves it once the indexes the rebuild
            # left due for training are swapped in (SemanticCache._checkpoint_when_indexed).
            return empty, -1
        return DerivedState(snapshot.catalog(), index), snapshot.store_version

    def rebuild(self, state: DerivedState, counters: Counter[str]) -> None:
        """Fill ``state`` from the store."""
        entries: list[Entry] = []
        doomed: list[int] = []
        now = self.clock()
        for found in self.store.scan():
            if isinstance(found, CorruptEntryError):
                logger.error("removing corrupt entry %d: %s", found.entry_id, found)
                counters["corrupt"] += 1
                doomed.append(found.entry_id)
            elif found.expired(now):
                counters["expired"] += 1
                doomed.append(found.entry_id)
            else:
                entries.append(found)
        if doomed:
            self.store.delete_many(doomed)
        name = self.vectors.name
        stale = [e for e in entries if e.embedder is not None and e.embedder != name]
        if stale:
            logger.warning(
                "re-embedding %d entries stored with another model for %r", len(stale), name
            )
            vectors = self.vectors.embed([(e.namespace, e.prompt) for e in stale])
            updated = {
                e.entry_id: replace(e, embedder=name, vector=v)
                for e, v in zip(stale, vectors, strict=True)
            }
            self.store.rewrite_vectors(list(updated.values()))
            entries = [updated.get(e.entry_id, e) for e in entries]
        entries.sort(key=lambda e: (e.last_access, e.entry_id))
        state.apply(added=entries)
        counters["rebuild"] += 1

    def capture(
        self, state: DerivedState, lock: AbstractContextManager[Any] | None = None
    ) -> Snapshot | None:
        """A copy of the derived state.

        The store version and the catalog are copied under ``lock`` (the one every change of
        the state takes); the indexes after it, each scope under its own read lock, so no
        lookup waits for the serialisation. A change that lands between the two makes the
        snapshot stale by its version, which the next open notices and rebuilds from.
        """
        with lock or nullcontext():
            if state.index.dim is None:
                return None
            version, dim = self.store.version, state.index.dim
            ids, items = state.catalog.columns()
        return Snapshot(
            store_version=version,
            embedder=self.vectors.name,
            dim=dim,
            ids=ids,
            items=items,
            indexes=state.index.dump(),
        )

    def write(self, snapshot: Snapshot) -> None:
        """Raises:
        OSError: the snapshot could not be written (the next open rebuilds).
        """
        write_snapshot(self.path, snapshot)
