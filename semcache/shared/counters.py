"""Integer counters and once-only marks, local or shared.

The budgets' ledger keeps spend in whole micro-dollars (:meth:`Counters.incr`) and notes each
warning once (:meth:`Counters.mark`). :class:`DiskCounters` keep them in a diskcache (one
machine, several workers). :class:`SharedCounters` keep them in Redis, for every sidecar at
once (``INCRBY``; ``SET NX``, so a warning is given once in total), with an expiry; while Redis
is away they go on locally, and the increments made meanwhile are added to Redis when it is
back, so no spend is lost.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Protocol

import diskcache

from semcache.errors import StoreError
from semcache.shared.link import RedisLink, RedisUnavailableError


class Counters(Protocol):
    def incr(self, key: str, amount: int, *, ttl_s: int) -> int:
        """Add ``amount``; the new value."""
        ...

    def get(self, key: str) -> int: ...

    def mark(self, key: str, *, ttl_s: int) -> bool:
        """Set a mark; True only for the first to set it."""
        ...

    def close(self) -> None: ...


class DiskCounters:
    def __init__(self, directory: Path) -> None:
        try:
            self._db = diskcache.Cache(str(directory), eviction_policy="none")
        except Exception as exc:  # diskcache raises sqlite3 and OS errors
            raise StoreError(f"cannot open the counters in {directory}: {exc}") from exc

    def incr(self, key: str, amount: int, *, ttl_s: int) -> int:
        return int(self._db.incr(key, amount, default=0))

    def get(self, key: str) -> int:
        return int(self._db.get(key, 0))

    def mark(self, key: str, *, ttl_s: int) -> bool:
        return bool(self._db.add(key, True, expire=ttl_s))

    def names(self) -> list[str]:
        return [k for k in self._db.iterkeys() if isinstance(k, str)]

    def take(self, prefix: str) -> dict[str, int]:
        """Remove and return every counter whose key starts with ``prefix``."""
        taken = {}
        with self._db.transact():
            for key in list(self._db.iterkeys()):
                if isinstance(key, str) and key.startswith(prefix):
                    taken[key.removeprefix(prefix)] = int(self._db.pop(key, 0))
        return taken

    def close(self) -> None:
        self._db.close()


_PENDING = "pending:"  # local counters of increments Redis has not seen yet: "pending:<ttl>:<key>"


class SharedCounters:
    """Counters in Redis under ``prefix``, with ``local`` standing in while Redis is away."""

    def __init__(self, link: RedisLink, local: DiskCounters, prefix: str = "semcache") -> None:
        self._link = link
        self._local = local
        self._prefix = prefix
        self._seen: dict[str, int] = {}  # the last value Redis gave, per key
        self._lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def _hold(self, key: str, amount: int, ttl_s: int) -> int:
        """Keep an increment on disk until Redis takes it; the value as far as known."""
        held = self._local.incr(f"{_PENDING}{ttl_s}:{key}", amount, ttl_s=ttl_s)
        return self._seen.get(key, 0) + held

    def _flush(self) -> None:
        """Increments made while Redis was away, added now that it answers (once: they are
        taken off the disk before they are sent, and put back if sending fails)."""
        if not self._link.up:
            raise RedisUnavailableError("paused after a failure")
        with self._lock:
            pending = self._local.take(_PENDING)
        if not pending:
            return

        def add_all(client: object) -> None:
            pipe = self._link.client.pipeline()
            for held, amount in pending.items():
                ttl_s, key = held.split(":", 1)
                pipe.incrby(self._key(key), amount)
                pipe.expire(self._key(key), int(ttl_s), nx=True)
            pipe.execute()

        try:
            self._link.call(add_all)
        except RedisUnavailableError:
            for held, amount in pending.items():
                self._local.incr(_PENDING + held, amount, ttl_s=0)
            raise

    def incr(self, key: str, amount: int, *, ttl_s: int) -> int:
        try:
            self._flush()

            def add(client: object) -> int:
                pipe = self._link.client.pipeline()
                pipe.incrby(self._key(key), amount)
                pipe.expire(self._key(key), ttl_s, nx=True)
                value, _ = pipe.execute()
                return int(value)

            value = self._link.call(add)
            self._seen[key] = value
            return value
        except RedisUnavailableError:
            return self._hold(key, amount, ttl_s)

    def get(self, key: str) -> int:
        try:
            self._flush()
            raw = self._link.call(lambda client: self._link.client.get(self._key(key)))
            value = int(raw or 0)
            self._seen[key] = value
            return value
        except RedisUnavailableError:
            pending = [v for k, v in self._local_pending().items() if k.endswith(":" + key)]
            return self._seen.get(key, 0) + sum(pending)

    def _local_pending(self) -> dict[str, int]:
        return {
            k.removeprefix(_PENDING): v for k in self._local_keys() if (v := self._local.get(k))
        }

    def _local_keys(self) -> list[str]:
        return [k for k in self._local.names() if k.startswith(_PENDING)]

    def mark(self, key: str, *, ttl_s: int) -> bool:
        try:
            result = self._link.call(
                lambda client: self._link.client.set(self._key(key), 1, nx=True, ex=ttl_s)
            )
            return bool(result)
        except RedisUnavailableError:
            return self._local.mark(key, ttl_s=ttl_s)  # at worst one warning twice

    @property
    def pending(self) -> int:
        """Counters with increments waiting for Redis."""
        return len(self._local_keys())

    def close(self) -> None:
        with contextlib.suppress(RedisUnavailableError):
            self._flush()
        self._local.close()
