"""An upstream's circuit breaker shared by every sidecar through Redis.

Each sidecar counts its own failures in a row (:class:`~semcache.upstream.breaker.
CircuitBreaker`); when one opens its breaker it says so on Redis (a key that expires when the
probe is due), and every other sidecar treats the upstream as open until then instead of
finding out with failures of its own. The first success anywhere deletes the key. While Redis
is away each breaker is local, as without ``--redis``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from semcache.shared.link import RedisLink, RedisUnavailableError
from semcache.upstream.breaker import CircuitBreaker

_REFRESH_S = 0.5  # how old the view of the shared state may be


def breaker_name(base_url: str) -> str:
    return "semcache:breaker:" + hashlib.sha256(base_url.encode()).hexdigest()[:24]


class SharedCircuitBreaker(CircuitBreaker):
    def __init__(
        self,
        *,
        failures: int,
        reset_s: float,
        clock: Callable[[], float],
        name: str,
        link: RedisLink,
        key: str,
    ) -> None:
        super().__init__(failures=failures, reset_s=reset_s, clock=clock, name=name)
        self._link = link
        self._key = key
        self._shared_open_for = 0.0  # seconds the breaker was open for, as of ``_seen_at``
        self._seen_at = -float("inf")

    def _shared_remaining(self) -> float:
        """Seconds the shared breaker stays open (0: not open elsewhere)."""
        now = time.monotonic()
        if now - self._seen_at > _REFRESH_S:
            try:
                ttl = self._link.call(lambda client: client.pttl(self._key))
                self._shared_open_for = max(0.0, int(ttl) / 1000)  # -2: no key, -1: none
            except RedisUnavailableError:
                self._shared_open_for = 0.0
            self._seen_at = now
        return max(0.0, self._shared_open_for - (now - self._seen_at))

    @property
    def state(self) -> str:
        local = super().state
        if local == self.CLOSED and self._shared_remaining() > 0:
            return self.OPEN
        return local

    def allows(self) -> bool:
        return super().allows() and self._shared_remaining() == 0

    def retry_in(self) -> float:
        return max(super().retry_in(), self._shared_remaining())

    def on_success(self) -> None:
        was_open = super().state != self.CLOSED or self._shared_remaining() > 0
        super().on_success()
        if was_open:
            self._publish(0.0)

    def on_failure(self) -> None:
        super().on_failure()
        remaining = super().retry_in()
        if super().state == self.OPEN and remaining > 0:
            self._publish(remaining)

    def _publish(self, open_for_s: float) -> None:
        try:
            if open_for_s > 0:
                self._link.call(
                    lambda client: client.set(self._key, 1, px=max(1, int(open_for_s * 1000)))
                )
            else:
                self._link.call(lambda client: client.delete(self._key))
        except RedisUnavailableError:
            return
        self._shared_open_for, self._seen_at = open_for_s, time.monotonic()
