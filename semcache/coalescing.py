"""Coalescing identical concurrent misses into one upstream call.

When several requests with the same scope and prompt miss at once, the first (the leader) goes
upstream; the others wait for its answer instead of paying for the same tokens again. If the
leader gets no storable answer, each follower goes upstream on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Coalescer:
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    def join(self, key: str) -> asyncio.Future[Any] | None:
        """``None`` if the caller leads (and must call :meth:`finish`), else the leader's
        future to await."""
        future = self._inflight.get(key)
        if future is not None:
            return future
        self._inflight[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str, result: Any | None) -> None:
        """Hand the leader's answer (``None`` for none worth sharing) to its followers."""
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)

    def __len__(self) -> int:
        return len(self._inflight)
