"""A circuit breaker per upstream: stop sending to one that keeps failing, probe it later.

closed --(``failures`` failures in a row)--> open --(``reset_s`` later)--> half-open: one probe
request is let through; its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger("semcache.upstream")


class CircuitBreaker:
    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self, *, failures: int, reset_s: float, clock: Callable[[], float], name: str = "upstream"
    ) -> None:
        self.name = name
        self.failures_to_open = failures
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state(self._clock())

    def _state(self, now: float) -> str:
        if self._opened_at is None:
            return self.CLOSED
        if now - self._opened_at >= self.reset_s:
            return self.HALF_OPEN
        return self.OPEN

    def allows(self) -> bool:
        """Whether a request may be sent now (in half-open, only while no probe is out)."""
        with self._lock:
            state = self._state(self._clock())
            return state == self.CLOSED or (state == self.HALF_OPEN and not self._probing)

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it allows requests)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.reset_s - self._clock())

    def on_send(self) -> None:
        with self._lock:
            if self._state(self._clock()) == self.HALF_OPEN and not self._probing:
                self._probing = True
                logger.info("breaker of %s half-open: sending a request as the probe", self.name)

    def on_success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                logger.warning("breaker of %s closed: the upstream answers again", self.name)
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def on_failure(self) -> None:
        with self._lock:
            now = self._clock()
            if self._state(now) == self.HALF_OPEN:
                self._opened_at = now  # the probe failed: open again for another period
                logger.warning(
                    "breaker of %s open again: the probe failed; next probe in %g s",
                    self.name,
                    self.reset_s,
                )
            else:
                self._failures += 1
                if self._failures >= self.failures_to_open and self._opened_at is None:
                    self._opened_at = now
                    logger.warning(
                        "breaker of %s open after %d failures in a row; next probe in %g s",
                        self.name,
                        self._failures,
                        self.reset_s,
                    )
            self._probing = False
