"""What the cache derives from its store and keeps in memory: the catalog (recency, sizes,
lifetimes, namespaces) and one vector index per scope.

Every change to it goes through :meth:`DerivedState.apply` with the entries added to and the
ids removed from the store: one path, so the two can never disagree with each other, and so
that a log of changes could one day be shipped to another replica.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from semcache.catalog import Catalog, Item
from semcache.entries import Entry
from semcache.index import ScopedIndex


class DerivedState:
    def __init__(self, catalog: Catalog, index: ScopedIndex) -> None:
        self.catalog = catalog
        self.index = index

    def apply(self, *, added: Sequence[Entry] = (), removed: Sequence[int] = ()) -> None:
        """Reflect a change of the store: ``added`` entries (with their ids and sizes, in
        recency order, least recent first) and ``removed`` ids. An id in both (an entry
        superseded within the same batch) ends up absent."""
        if removed:
            for scope, scope_ids in self.catalog.scopes_of(removed).items():
                self.index.remove(scope, scope_ids)
            for entry_id in removed:
                self.catalog.remove(entry_id)
        gone = set(removed)
        kept = [entry for entry in added if entry.entry_id not in gone]
        by_scope: dict[str, list[Entry]] = {}
        for entry in kept:
            self.catalog.add(entry.entry_id, item_of(entry))
            if entry.vector is not None:
                by_scope.setdefault(entry.scope, []).append(entry)
        for scope, members in by_scope.items():
            ids = np.array([entry.entry_id for entry in members], np.int64)
            self.index.add(scope, ids, np.stack([_vector(entry) for entry in members]))


def item_of(entry: Entry) -> Item:
    # Interned: a million entries of one scope share its key instead of holding a copy each.
    return Item(
        scope=sys.intern(entry.scope),
        namespace=sys.intern(entry.namespace),
        size=entry.size,
        expires_at=entry.expires_at,
        indexed=entry.vector is not None,
    )


def _vector(entry: Entry) -> NDArray[np.float32]:
    assert entry.vector is not None
    return entry.vector
