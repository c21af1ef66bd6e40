"""Saving the derived state (FAISS indexes and catalog) so a restart need not rebuild it.

The snapshot is one file, written to a temporary name, flushed to disk and renamed over the old
one, so a reader sees either the old snapshot or the new one, never half of one. It names the
store version it reflects and ends with a SHA-256 of everything before it: a snapshot that is
stale (the store changed after it was written, for instance by a process that was killed),
truncated or altered is refused, and the cache rebuilds from the store instead.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from semcache.catalog import Catalog, Item
from semcache.errors import StoreError
from semcache.index import Blob

_MAGIC = b"SCSNAP01"
_LENGTH = struct.Struct("<Q")
_DIGEST_SIZE = 32
_SLICE = 1024  # catalog rows converted between two chances for other threads to run


@dataclass(frozen=True)
class Snapshot:
    store_version: int
    embedder: str
    dim: int
    ids: list[int]  # least recently used first
    items: list[Item]  # the entry of each id
    indexes: dict[str, tuple[int, Blob]]

    def catalog(self) -> Catalog:
        catalog = Catalog()
        for entry_id, item in zip(self.ids, self.items, strict=True):
            catalog.add(entry_id, item)
        return catalog


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Atomically replace ``path`` with ``snapshot``."""
    ids, items = snapshot.ids, snapshot.items
    scopes = sorted(set(snapshot.indexes))
    scope_number = {scope: n for n, scope in enumerate(scopes)}
    namespaces: dict[str, str] = {}
    count = len(items)
    arrays = {
        "ids": np.empty(count, np.int64),
        "sizes": np.empty(count, np.int64),
        "expires": np.empty(count, np.float64),
        "indexed": np.empty(count, np.bool_),
        "scopes": np.empty(count, np.int32),
    }
    # Column by column, a slice at a time, letting other threads run between slices: a lookup
    # that waits for the interpreter waits for one slice, not for a million entries.
    for start in range(0, count, _SLICE):
        stop = min(count, start + _SLICE)
        rows = items[start:stop]
        arrays["ids"][start:stop] = ids[start:stop]
        arrays["sizes"][start:stop] = [item.size for item in rows]
        arrays["expires"][start:stop] = [
            np.nan if item.expires_at is None else item.expires_at for item in rows
        ]
        arrays["indexed"][start:stop] = [item.indexed for item in rows]
        numbers = []
        for item in rows:
            number = scope_number.get(item.scope)
            if number is None:
                number = scope_number[item.scope] = len(scopes)
                scopes.append(item.scope)
            namespaces.setdefault(item.scope, item.namespace)
            numbers.append(number)
        arrays["scopes"][start:stop] = numbers
        time.sleep(0)
    blobs: list[bytes | memoryview] = [a.tobytes() for a in arrays.values()]
    blobs += [snapshot.indexes[s][1] for s in scopes if s in snapshot.indexes]
    header = orjson.dumps(
        {
            "store_version": snapshot.store_version,
            "embedder": snapshot.embedder,
            "dim": snapshot.dim,
            "count": len(items),
            "arrays": [[name, a.dtype.str] for name, a in arrays.items()],
            "scopes": [[s, namespaces.get(s, "")] for s in scopes],
            "indexes": [[s, snapshot.indexes[s][0]] for s in scopes if s in snapshot.indexes],
            "lengths": [len(b) for b in blobs],
        }
    )
    # Written and hashed part by part: joining them first would copy every index once more,
    # holding the interpreter for as long (lookups on other threads would wait).
    parts: list[bytes | memoryview] = [_MAGIC, _LENGTH.pack(len(header)), header, *blobs]
    digest = hashlib.sha256()
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        for part in parts:
            digest.update(part)
            file.write(part)
        file.write(digest.digest())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_snapshot(path: Path) -> Snapshot:
    """Raises StoreError when the file is missing, truncated, altered or of another format."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"no snapshot at {path}: {exc}") from exc
    view = memoryview(data)
    body, digest = view[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if bytes(body[: len(_MAGIC)]) != _MAGIC or hashlib.sha256(body).digest() != digest:
        raise StoreError(f"snapshot {path} is truncated or corrupt")
    try:
        (header_len,) = _LENGTH.unpack_from(body, len(_MAGIC))
        offset = len(_MAGIC) + _LENGTH.size
        header = orjson.loads(bytes(body[offset : offset + header_len]))
        offset += header_len
        blobs = []
        for length in header["lengths"]:
            blobs.append(body[offset : offset + length])
            offset += length
        arrays = {
            name: np.frombuffer(blob, np.dtype(dtype))
            for (name, dtype), blob in zip(header["arrays"], blobs, strict=False)
        }
        scopes = [(scope, namespace) for scope, namespace in header["scopes"]]
        items: list[Item] = []
        for size, expires, indexed, scope_number in zip(
            arrays["sizes"].tolist(),
            arrays["expires"].tolist(),
            arrays["indexed"].tolist(),
            arrays["scopes"].tolist(),
            strict=True,
        ):
            scope, namespace = scopes[scope_number]
            item = Item(
                scope=scope,
                namespace=namespace,
                size=size,
                expires_at=None if expires != expires else expires,  # NaN: no expiry
                indexed=indexed,
            )
            items.append(item)
        index_blobs = blobs[len(header["arrays"]) :]
        indexes: dict[str, tuple[int, Blob]] = {
            scope: (int(trained_on), blob)
            for (scope, trained_on), blob in zip(header["indexes"], index_blobs, strict=True)
        }
        return Snapshot(
            store_version=int(header["store_version"]),
            embedder=str(header["embedder"]),
            dim=int(header["dim"]),
            ids=arrays["ids"].tolist(),
            items=items,
            indexes=indexes,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise StoreError(f"snapshot {path} cannot be read: {exc}") from exc
