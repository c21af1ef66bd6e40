"""Single-flight across sidecars: identical concurrent misses on different sidecars make one
upstream call.

The first sidecar to miss takes a short lock on Redis (``SET NX`` with an expiry it renews
while the call runs) and leads; the others wait for the answer it publishes (kept a few
seconds). A waiter whose leader dies sees the lock expire and goes upstream itself; so does
every waiter when Redis is away (each sidecar then coalesces on its own, as without
``--redis``). Keys are digests of the request's exact key, which holds its tenant: requests
of different tenants never share a flight, and no prompt is written in a key name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from typing import Any

import orjson

from semcache.shared.link import RedisLink, RedisUnavailableError

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SharedFlights:
    def __init__(
        self,
        link: RedisLink,
        *,
        lock_s: float = 5.0,
        answer_s: float = 10.0,
        poll_s: float = 0.02,
    ) -> None:
        self._link = link
        self.lock_s = lock_s
        self.answer_s = answer_s
        self.poll_s = poll_s
        self._owner = secrets.token_hex(8)
        self._release: Any = link.client.register_script(_RELEASE)
        self._renewals: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def _names(key: str) -> tuple[str, str]:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"semcache:flight:{digest}", f"semcache:flight-answer:{digest}"

    def lead(self, key: str) -> bool:
        """Whether this sidecar leads the flight of ``key`` (also when Redis is away)."""
        lock, _ = self._names(key)
        try:
            taken = self._link.call(
                lambda client: client.set(lock, self._owner, nx=True, px=int(self.lock_s * 1000))
            )
        except RedisUnavailableError:
            return True
        if taken:
            self._renewals[key] = asyncio.get_running_loop().create_task(self._renew(lock))
        return bool(taken)

    async def _renew(self, lock: str) -> None:
        """Keep the lock while the call runs: it expires soon after a leader dies."""
        while True:
            await asyncio.sleep(self.lock_s / 3)
            with contextlib.suppress(RedisUnavailableError):
                self._link.call(lambda client: client.pexpire(lock, int(self.lock_s * 1000)))

    async def wait(self, key: str, timeout_s: float) -> Any | None:
        """The leader's answer; ``None`` when it published none (it failed, or died, or Redis
        is away, or ``timeout_s`` passed): the waiter then goes upstream itself."""
        lock, answer = self._names(key)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                published, locked = self._link.call(lambda client: self._look(client, lock, answer))
            except RedisUnavailableError:
                return None
            if published is not None:
                return orjson.loads(published)
            if not locked:
                return None
            await asyncio.sleep(self.poll_s)
        return None

    @staticmethod
    def _look(client: Any, lock: str, answer: str) -> tuple[bytes | None, int]:
        pipe = client.pipeline()
        pipe.get(answer)
        pipe.exists(lock)
        published, locked = pipe.execute()
        return published, int(locked)

    def finish(self, key: str, result: Any | None) -> None:
        """Publish the leader's answer (``None``: none worth sharing) and end the flight."""
        renewal = self._renewals.pop(key, None)
        if renewal is not None:
            renewal.cancel()
        lock, answer = self._names(key)
        with contextlib.suppress(RedisUnavailableError):
            if result is not None:
                data = orjson.dumps(result)
                self._link.call(
                    lambda client: client.set(answer, data, px=int(self.answer_s * 1000))
                )
            self._link.call(lambda client: self._release(keys=[lock], args=[self._owner]))

    def close(self) -> None:
        for renewal in self._renewals.values():
            renewal.cancel()
        self._renewals.clear()
