"""The entry store: the source of truth, on diskcache (SQLite in WAL mode).

Everything else the cache keeps (the FAISS indexes, the LRU order) is derived from what is here
and can be rebuilt from it. Each write is one SQLite transaction, committed before ``put``
returns, so a process killed at any point loses no entry whose ``put`` had returned.

Layout of the diskcache keys:

    <int id>            an entry record (see :func:`encode_entry`)
    "x:<exact key>"     id of the entry stored for that scope and normalised prompt
    "h:<id>"            (hit count, last access) of an entry, rewritten on each hit
    "w:<id>"            an entry record marked wrong: never served again, kept for audit
    "meta:version"      bumped by every transaction that adds or removes entries, so a snapshot
                        of the derived state can tell whether it is current
    "meta:next_id"      the last id handed out
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import diskcache
import numpy as np
import orjson
from numpy.typing import NDArray

from semcache.errors import CorruptEntryError, StoreError

_MAGIC = b"SCE1"
_HEADER = struct.Struct("<4sI")
_STATS = struct.Struct("<Qd")
FORMAT = 1

# diskcache must never drop a key on its own: the index would keep pointing at it. Bounds are
# enforced by the cache, which evicts from store and index together.
_DISKCACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "cull_limit": 0,
    "size_limit": 2**62,
    "statistics": False,
    "sqlite_journal_mode": "wal",
    "sqlite_synchronous": 1,  # NORMAL: commits survive a killed process; FULL adds power loss
}


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One stored prompt and its response."""

    entry_id: int
    prompt: str
    response: Any
    namespace: str
    scope: str
    exact_key: str
    created_at: float
    expires_at: float | None
    embedder: str | None  # None when the prompt has no vector (longer than the model's window)
    vector: NDArray[np.float32] | None
    size: int = 0
    hits: int = 0
    last_access: float = 0.0

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def encode_entry(entry: Entry) -> bytes:
    """``magic | meta length | meta (orjson) | vector (float32)``.

    Raises:
        TypeError: the response is not JSON-serialisable.
    """
    meta = orjson.dumps(
        {
            "p": entry.prompt,
            "r": entry.response,
            "n": entry.namespace,
            "s": entry.scope,
            "x": entry.exact_key,
            "c": entry.created_at,
            "e": entry.expires_at,
            "m": entry.embedder,
            "d": 0 if entry.vector is None else int(entry.vector.shape[0]),
        }
    )
    vector = b"" if entry.vector is None else np.asarray(entry.vector, "<f4").tobytes()
    return _HEADER.pack(_MAGIC, len(meta)) + meta + vector


def decode_entry(entry_id: int, data: object) -> Entry:
    """Raises CorruptEntryError when ``data`` is not a record written by :func:`encode_entry`."""
    if not isinstance(data, bytes) or len(data) < _HEADER.size:
        raise CorruptEntryError(f"entry {entry_id}: not an entry record", entry_id=entry_id)
    magic, meta_len = _HEADER.unpack_from(data)
    if magic != _MAGIC or _HEADER.size + meta_len > len(data):
        raise CorruptEntryError(f"entry {entry_id}: bad header", entry_id=entry_id)
    try:
        meta = orjson.loads(data[_HEADER.size : _HEADER.size + meta_len])
        vector_bytes = data[_HEADER.size + meta_len :]
        dim = int(meta["d"])
        if len(vector_bytes) != 4 * dim:
            raise ValueError(f"vector has {len(vector_bytes)} bytes, expected {4 * dim}")
        vector = np.frombuffer(vector_bytes, "<f4").astype(np.float32) if dim else None
        if vector is not None and not np.isfinite(vector).all():
            raise ValueError("vector holds NaN or infinity")
        return Entry(
            entry_id=entry_id,
            prompt=str(meta["p"]),
            response=meta["r"],
            namespace=str(meta["n"]),
            scope=str(meta["s"]),
            exact_key=str(meta["x"]),
            created_at=float(meta["c"]),
            expires_at=None if meta["e"] is None else float(meta["e"]),
            embedder=meta["m"],
            vector=vector,
            size=len(data),
            last_access=float(meta["c"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptEntryError(f"entry {entry_id}: {exc}", entry_id=entry_id) from exc


@dataclass(frozen=True)
class Written:
    """What :meth:`DiskStore.put_many` did for one entry."""

    entry_id: int
    size: int
    replaced_id: int | None  # the entry with the same exact key that this one superseded


class EntryStore(Protocol):
    """Where entries live: the source of truth that everything else is derived from. Each
    method is one transaction; ids are handed out by the store. :class:`DiskStore` is the
    embedded one."""

    @property
    def version(self) -> int:
        """Bumped by every change that adds or removes entries."""
        ...

    def get(self, entry_id: int) -> Entry | None: ...

    def find_exact(self, exact_key: str) -> int | None: ...

    def put_many(self, entries: Sequence[Entry]) -> list[Written]: ...

    def delete_many(self, entry_ids: Sequence[int]) -> list[int]: ...

    def quarantine(self, entry_id: int) -> bool: ...

    def get_wrong(self, entry_id: int) -> Entry | None: ...

    def wrong_ids(self) -> list[int]: ...

    def record_hit(self, entry: Entry, at: float) -> None: ...

    def scan(self) -> Iterator[Entry | CorruptEntryError]: ...

    def rewrite_vectors(self, updates: Sequence[Entry]) -> None: ...

    def close(self) -> None: ...


class DiskStore:
    """Entries in a diskcache directory."""

    def __init__(self, directory: Path) -> None:
        try:
            self._cache = diskcache.Cache(str(directory), **_DISKCACHE_SETTINGS)
            stored_format = self._cache.get("meta:format")
            if stored_format is None:
                self._cache.set("meta:format", FORMAT)
            elif stored_format != FORMAT:
                raise StoreError(
                    f"{directory} holds store format {stored_format}; this version of semcache "
                    f"reads format {FORMAT}. Use a new cache directory."
                )
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"cannot open the entry store in {directory}: {exc}") from exc

    def close(self) -> None:
        self._cache.close()

    @property
    def version(self) -> int:
        return int(self._cache.get("meta:version", 0))

    def get(self, entry_id: int) -> Entry | None:
        """The entry, or ``None`` if it is gone.

        Raises:
            CorruptEntryError: the record exists but cannot be decoded.
        """
        data = self._cache.get(entry_id)
        if data is None:
            return None
        entry = decode_entry(entry_id, data)
        stats = self._cache.get(f"h:{entry_id}")
        if stats is not None:
            hits, last_access = _STATS.unpack(stats)
            entry = _with_stats(entry, hits, last_access)
        return entry

    def find_exact(self, exact_key: str) -> int | None:
        entry_id = self._cache.get(f"x:{exact_key}")
        return None if entry_id is None else int(entry_id)

    def put_many(self, entries: Sequence[Entry]) -> list[Written]:
        """Store ``entries`` in one transaction, giving each a new id.

        An entry whose exact key is already taken supersedes the entry holding it, which is
        deleted in the same transaction. ``entry_id`` of the arguments is ignored.
        """
        written: list[Written] = []
        with self._cache.transact():
            first = self._cache.incr("meta:next_id", len(entries)) - len(entries) + 1
            for offset, entry in enumerate(entries):
                entry_id = first + offset
                data = encode_entry(entry)
                previous = self.find_exact(entry.exact_key)
                if previous is not None:
                    self._delete(previous)
                self._cache.set(entry_id, data)
                self._cache.set(f"x:{entry.exact_key}", entry_id)
                written.append(Written(entry_id, len(data), previous))
            self._cache.incr("meta:version")
        return written

    def delete_many(self, entry_ids: Sequence[int]) -> list[int]:
        """Delete entries in one transaction; returns the ids that existed."""
        deleted = []
        with self._cache.transact():
            for entry_id in entry_ids:
                if self._delete(entry_id):
                    deleted.append(entry_id)
            if deleted:
                self._cache.incr("meta:version")
        return deleted

    def quarantine(self, entry_id: int) -> bool:
        """Move an entry out of service into ``w:<id>``; ``False`` if there was none."""
        with self._cache.transact():
            data = self._cache.get(entry_id)
            if data is None:
                return False
            self._cache.set(f"w:{entry_id}", data)
            self._delete(entry_id)
            self._cache.incr("meta:version")
        return True

    def _delete(self, entry_id: int) -> bool:
        data = self._cache.get(entry_id)
        if data is None:
            return False
        try:
            exact = decode_entry(entry_id, data).exact_key
        except CorruptEntryError:
            exact = None
        if exact is not None and self._cache.get(f"x:{exact}") == entry_id:
            self._cache.delete(f"x:{exact}")
        self._cache.delete(f"h:{entry_id}")
        self._cache.delete(entry_id)
        return True

    def get_wrong(self, entry_id: int) -> Entry | None:
        """An entry marked wrong (kept for audit), or ``None``.

        Raises:
            CorruptEntryError: the record exists but cannot be decoded.
        """
        data = self._cache.get(f"w:{entry_id}")
        return None if data is None else decode_entry(entry_id, data)

    def wrong_ids(self) -> list[int]:
        """Ids of the entries marked wrong, in order (a scan of the keys: for audits)."""
        return sorted(
            int(key[2:])
            for key in self._cache.iterkeys()
            if isinstance(key, str) and key[:2] == "w:"
        )

    def record_hit(self, entry: Entry, at: float) -> None:
        self._cache.set(f"h:{entry.entry_id}", _STATS.pack(entry.hits + 1, at))

    def scan(self) -> Iterator[Entry | CorruptEntryError]:
        """Every entry in id order; a record that fails to decode is yielded as its error.

        One read of diskcache's table, not a query per key (a rebuild of 100k entries made
        200k of them): the rows are decoded by diskcache's own ``Disk``, so values kept in
        files of their own are read as ``get`` would.
        """
        disk = self._cache.disk
        records: dict[int, bytes] = {}
        stats: dict[int, bytes] = {}
        rows = self._cache._sql("SELECT key, raw, mode, filename, value FROM Cache").fetchall()
        for raw_key, raw, mode, filename, value in rows:
            key = disk.get(raw_key, raw)
            if isinstance(key, int):
                records[key] = disk.fetch(mode, filename, value, False)
            elif isinstance(key, str) and key[:2] == "h:" and key[2:].isdigit():
                stats[int(key[2:])] = disk.fetch(mode, filename, value, False)
        del rows
        for entry_id in sorted(records):
            try:
                entry = decode_entry(entry_id, records.pop(entry_id))
            except CorruptEntryError as exc:
                yield exc
                continue
            found = stats.get(entry_id)
            if found is not None:
                hits, last_access = _STATS.unpack(found)
                entry = _with_stats(entry, hits, last_access)
            yield entry

    def rewrite_vectors(self, updates: Sequence[Entry]) -> None:
        """Store entries again under their own ids (after re-embedding), in one transaction."""
        with self._cache.transact():
            for entry in updates:
                self._cache.set(entry.entry_id, encode_entry(entry))
            self._cache.incr("meta:version")


def _with_stats(entry: Entry, hits: int, last_access: float) -> Entry:
    if not math.isfinite(last_access):
        last_access = entry.created_at
    return replace(entry, hits=hits, last_access=last_access)
