"""One connection to Redis that never holds a request up for long.

Every call has a short socket timeout. After a failure the link pauses for ``retry_s``: calls
in that time fail at once, without touching the network, so a Redis that is down or slow costs
the sidecar nothing but the fallback it takes (each failure is counted for
``semcache_redis_errors_total``). The first call after the pause tries again; that is how the
link reconnects by itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import redis

from semcache.errors import ConfigError

logger = logging.getLogger("semcache.shared")

T = TypeVar("T")


class RedisUnavailableError(Exception):
    """Redis did not answer (or the link is pausing after a failure)."""


def resolve_secret(value: str | None) -> str | None:
    """A password given as ``env:NAME`` is read from the environment variable ``NAME``.

    Raises:
        ConfigError: the variable is not set.
    """
    if value is None or not value.startswith("env:"):
        return value
    name = value.removeprefix("env:")
    secret = os.environ.get(name)
    if secret is None:
        raise ConfigError(f"the Redis password names the environment variable {name}, unset")
    return secret


def check_url(url: str) -> str:
    """``redis://host:port/db`` or ``rediss://…`` (TLS), a password in it or ``env:NAME``.

    Raises:
        ConfigError: any other URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError(f"redis must be a redis://, rediss:// or unix:// URL, got {url!r}")
    return url


class RedisLink:
    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout_s: float = 0.25,
        retry_s: float = 1.0,
        on_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_url(url)
        parts = urlsplit(url)
        secret = resolve_secret(password if password is not None else parts.password)
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            password=secret,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        self.retry_s = retry_s
        self.on_error = on_error  # called on each failure (the sidecar counts them)
        self._clock = clock
        self._paused_until = 0.0
        self._down = False  # the last call failed
        self._lock = threading.Lock()
        self.errors = 0

    @property
    def up(self) -> bool:
        """Whether the last call succeeded (or the pause after a failure is over)."""
        return self._clock() >= self._paused_until

    def call(self, operation: Callable[[redis.Redis], T]) -> T:
        """Run ``operation`` on the client.

        Raises:
            RedisUnavailableError: Redis failed, or the link pauses after a failure.
        """
        if self._clock() < self._paused_until:
            raise RedisUnavailableError("paused after a failure")
        try:
            result = operation(self.client)
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                newly_down = not self._down
                self._down = True
                self._paused_until = self._clock() + self.retry_s
                self.errors += 1
            if newly_down:  # once per outage, not once per retry
                logger.warning("redis failed (%s); local stand-ins until it answers", exc)
            if self.on_error is not None:
                self.on_error()
            raise RedisUnavailableError(str(exc)) from exc
        if self._down:
            with self._lock:
                self._down = False
            logger.warning("redis answers again")
        return result

    def close(self) -> None:
        self.client.close()
