"""Per-key rate limits: a request bucket and a token bucket, kept a little under the upstream's.

OpenAI-style limits are buckets refilled continuously: ``rpm`` requests and ``tpm`` tokens per
minute, a full minute's worth available at once. Each key here mirrors them:

- a bucket of ``rpm`` requests and one of ``tpm`` tokens, refilled at ``rpm/60`` and ``tpm/60``
  per second;
- sending is paced at no more than ``burst`` (1.5) times the steady rate while a bucket has
  credit, so a burst of traffic spreads over seconds instead of landing in one instant;
- tokens are reserved before sending from an estimate (prompt tokens by tiktoken plus the
  completion's ``max_tokens`` or a typical length) and settled from the answer's ``usage``;
- the upstream's own view corrects ours: ``x-ratelimit-limit-*`` replaces a configured limit
  that is wrong, ``x-ratelimit-remaining-*`` lowers a bucket to what the upstream says is
  left, and a 429's ``Retry-After`` pauses the key until then.

No I/O here: the router asks :meth:`KeyLimiter.wait_time` and calls :meth:`reserve`.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_BURST = 1.5


class Bucket:
    """A continuously refilled bucket of ``capacity`` units, ``rate`` units per second, whose
    spending is paced at ``burst × rate`` at most."""

    def __init__(
        self, capacity: float, rate: float, *, now: float, burst: float = DEFAULT_BURST
    ) -> None:
        self.capacity = capacity
        self.rate = rate
        self.burst = burst
        self.level = capacity
        self._updated = now
        self._next_send = now  # pacing: the earliest time the next unit may go

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
            self._updated = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` units may be spent; ``inf`` if never (more than capacity)."""
        if amount > self.capacity:
            return math.inf
        self._refill(now)
        refill = 0.0 if self.level >= amount else (amount - self.level) / self.rate
        return max(refill, self._next_send - now, 0.0)

    def spend(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount
        self._next_send = max(self._next_send, now) + amount / (self.burst * self.rate)

    def give_back(self, amount: float, now: float) -> None:
        """Return units reserved but not used, and the pacing time they took."""
        self.level = min(self.capacity, self.level + amount)
        self._next_send = max(now, self._next_send - amount / (self.burst * self.rate))

    def resize(self, capacity: float, now: float) -> None:
        """Adopt another per-minute limit (the upstream's ``x-ratelimit-limit-*``)."""
        self._refill(now)
        self.capacity, self.rate = capacity, capacity / 60
        self.level = min(self.level, capacity)

    def lower_to(self, remaining: float, now: float) -> None:
        """The upstream says only ``remaining`` is left: believe it when it is less."""
        self._refill(now)
        self.level = min(self.level, remaining)

    def headroom(self, now: float) -> float:
        """Share of the bucket available now, in [0, 1] (negative when overdrawn)."""
        self._refill(now)
        return self.level / self.capacity


@dataclass(frozen=True)
class Reservation:
    key: KeyLimiter
    tokens: int
    shared: bool = False  # taken from buckets shared by several sidecars (semcache.shared)


class KeyLimiter:
    """The limits of one API key."""

    def __init__(
        self,
        key_id: str,
        *,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float],
        burst: float = DEFAULT_BURST,
    ) -> None:
        self.key_id = key_id
        self._clock = clock
        now = clock()
        self.requests = None if rpm is None else Bucket(rpm, rpm / 60, now=now, burst=burst)
        self.tokens = None if tpm is None else Bucket(tpm, tpm / 60, now=now, burst=burst)
        self.paused_until = 0.0
        self._lock = threading.Lock()

    def wait_time(self, tokens: int) -> float:
        """Seconds until a request of ``tokens`` estimated tokens may be sent on this key."""
        now = self._clock()
        with self._lock:
            wait = max(self.paused_until - now, 0.0)
            if self.requests is not None:
                wait = max(wait, self.requests.wait_time(1, now))
            if self.tokens is not None:
                wait = max(wait, self.tokens.wait_time(min(tokens, self.tokens.capacity), now))
            return wait

    def headroom(self) -> float:
        """The smaller of the two buckets' available shares (1.0 without limits)."""
        now = self._clock()
        with self._lock:
            if self.paused_until > now:
                return -1.0
            shares = [b.headroom(now) for b in (self.requests, self.tokens) if b is not None]
            return min(shares, default=1.0)

    def reserve(self, tokens: int) -> Reservation:
        """Take one request and ``tokens`` tokens now (the caller checked :meth:`wait_time`)."""
        now = self._clock()
        with self._lock:
            if self.requests is not None:
                self.requests.spend(1, now)
            if self.tokens is not None:
                self.tokens.spend(min(tokens, self.tokens.capacity), now)
        return Reservation(self, tokens)

    def try_reserve(self, tokens: int) -> Reservation | None:
        """:meth:`reserve` when the key is free now, else ``None`` (buckets shared with other
        sidecars may have been taken since :meth:`wait_time` looked)."""
        if self.wait_time(tokens) > 0:
            return None
        return self.reserve(tokens)

    def settle(self, reservation: Reservation, actual_tokens: int | None) -> None:
        """Correct the token reservation with the answer's ``usage`` (``None``: keep it)."""
        if actual_tokens is None or self.tokens is None:
            return
        now = self._clock()
        with self._lock:
            difference = reservation.tokens - actual_tokens
            if difference >= 0:
                self.tokens.give_back(difference, now)
            else:
                self.tokens.spend(-difference, now)

    def release(self, reservation: Reservation) -> None:
        """The request was never answered (connection failure): give everything back."""
        now = self._clock()
        with self._lock:
            if self.requests is not None:
                self.requests.give_back(1, now)
            if self.tokens is not None:
                self.tokens.give_back(reservation.tokens, now)

    def learn(self, headers: Mapping[str, str], status: int) -> None:
        """Take the upstream's word from ``x-ratelimit-remaining-*`` and, on 429,
        ``Retry-After`` (or ``x-ratelimit-reset-*``)."""
        now = self._clock()
        said = Advice.of(headers, status)
        with self._lock:
            for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
                if bucket is None:
                    continue
                limit = said.limits[name]
                if limit and limit != bucket.capacity:
                    bucket.resize(limit, now)  # the key's real limit, per minute
                remaining = said.remaining[name]
                if remaining is not None:
                    bucket.lower_to(remaining, now)
            if said.pause_s is not None:
                self.paused_until = max(self.paused_until, now + said.pause_s)


@dataclass(frozen=True)
class Advice:
    """What an upstream's response says of a key's limits, per bucket (``requests``,
    ``tokens``): its per-minute limit and what is left, and on a 429 how long to pause."""

    limits: Mapping[str, float | None]
    remaining: Mapping[str, float | None]
    pause_s: float | None

    @classmethod
    def of(cls, headers: Mapping[str, str], status: int) -> Advice:
        lowered = {k.lower(): v for k, v in headers.items()}
        names = ("requests", "tokens")
        pause = None
        if status == 429:
            pause = retry_after(lowered)
            if pause is None:
                resets = [parse_duration(lowered.get(f"x-ratelimit-reset-{n}", "")) for n in names]
                pause = max((r for r in resets if r is not None), default=1.0)
        return cls(
            limits={n: _number(lowered.get(f"x-ratelimit-limit-{n}")) for n in names},
            remaining={n: _number(lowered.get(f"x-ratelimit-remaining-{n}")) for n in names},
            pause_s=pause,
        )


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds; an HTTP date is not
    honoured), ``None`` when absent or unreadable. ``headers`` has lower-case names."""
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    return _number(headers.get("retry-after"))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(raw: str) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``."""
    parts = _DURATION.findall(raw.strip())
    if not parts or "".join(n + u for n, u in parts) != raw.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)
