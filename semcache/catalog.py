"""What the cache knows about its entries in memory: scope, size, expiry and recency.

Derived from the store (or from a snapshot of it), like the index. It answers the questions
that must not cost a disk read: which entries to evict, which have expired, which belong to a
namespace, whether a scope is empty (then no embedding is needed).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Item:
    scope: str
    namespace: str
    size: int
    expires_at: float | None
    indexed: bool  # has a vector in the scope's index


class Catalog:
    """Entries in least-recently-used order, with their expiry and totals. Not thread-safe:
    the cache calls it under its lock."""

    def __init__(self) -> None:
        self._items: OrderedDict[int, Item] = OrderedDict()
        self._expiry: list[tuple[float, int]] = []  # heap; stale rows are skipped when popped
        self._scope_sizes: dict[str, int] = {}
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._items

    def get(self, entry_id: int) -> Item | None:
        return self._items.get(entry_id)

    def items(self) -> Iterator[tuple[int, Item]]:
        """Entries from least to most recently used."""
        return iter(self._items.items())

    def columns(self) -> tuple[list[int], list[Item]]:
        """The ids and their items, least recently used first: two flat copies, quick enough
        to take under the cache's lock (no pair is built per entry)."""
        return list(self._items.keys()), list(self._items.values())

    def add(self, entry_id: int, item: Item) -> None:
        """Add an entry as the most recently used (callers adding in bulk go oldest first)."""
        if entry_id in self._items:
            self.remove(entry_id)
        self._items[entry_id] = item
        self.total_bytes += item.size
        self._scope_sizes[item.scope] = self._scope_sizes.get(item.scope, 0) + 1
        if item.expires_at is not None:
            heapq.heappush(self._expiry, (item.expires_at, entry_id))

    def touch(self, entry_id: int) -> None:
        if entry_id in self._items:
            self._items.move_to_end(entry_id)

    def remove(self, entry_id: int) -> Item | None:
        item = self._items.pop(entry_id, None)
        if item is not None:
            self.total_bytes -= item.size
            left = self._scope_sizes[item.scope] - 1
            if left:
                self._scope_sizes[item.scope] = left
            else:
                del self._scope_sizes[item.scope]
        return item

    def scope_size(self, scope: str) -> int:
        return self._scope_sizes.get(scope, 0)

    @property
    def scope_count(self) -> int:
        return len(self._scope_sizes)

    def over_bounds(self, max_entries: int | None, max_bytes: int | None) -> list[int]:
        """Least recently used ids whose removal brings the catalog within both bounds."""
        victims = []
        count, size = len(self._items), self.total_bytes
        for entry_id, item in self._items.items():
            if (max_entries is None or count <= max_entries) and (
                max_bytes is None or size <= max_bytes
            ):
                break
            victims.append(entry_id)
            count -= 1
            size -= item.size
        return victims

    def expired(self, now: float) -> list[int]:
        """Ids whose expiry has passed."""
        due = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, entry_id = heapq.heappop(self._expiry)
            item = self._items.get(entry_id)
            if item is not None and item.expires_at == expires_at:
                due.append(entry_id)
        return due

    def in_namespace(self, namespace: str | None) -> list[int]:
        return [i for i, item in self._items.items() if namespace in (None, item.namespace)]

    def scopes_of(self, entry_ids: Iterable[int]) -> dict[str, list[int]]:
        """Group ids that are in the catalog and indexed by scope."""
        groups: dict[str, list[int]] = {}
        for entry_id in entry_ids:
            item = self._items.get(entry_id)
            if item is not None and item.indexed:
                groups.setdefault(item.scope, []).append(entry_id)
        return groups
