"""Work a request leaves behind once its response is released: storing the answer.

A client should not wait for its answer to be embedded and written to disk. The tasks are kept
here so that none is lost to the garbage collector, and so that shutting down waits for them
before the cache closes: an answer that was served is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class AfterResponse:
    def __init__(self, on_count: Callable[[int], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_scope: dict[str, set[asyncio.Task[None]]] = {}
        self._on_count = on_count

    def spawn(self, work: Coroutine[Any, Any, None], scope: str) -> None:
        """Run ``work`` (a store into ``scope``) after the response."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        self._by_scope.setdefault(scope, set()).add(task)
        task.add_done_callback(lambda done: self._done(done, scope))
        self._count()

    def pending(self, scope: str) -> list[asyncio.Task[None]]:
        """The stores into ``scope`` under way now."""
        return list(self._by_scope.get(scope, ()))

    @staticmethod
    async def settled(tasks: list[asyncio.Task[None]]) -> None:
        """Wait for ``tasks`` (from :meth:`pending`), whatever their outcome."""
        if tasks:
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))

    def _done(self, task: asyncio.Task[None], scope: str) -> None:
        self._tasks.discard(task)
        pending = self._by_scope.get(scope)
        if pending is not None:
            pending.discard(task)
            if not pending:
                del self._by_scope[scope]
        self._count()

    def _count(self) -> None:
        if self._on_count is not None:
            self._on_count(len(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task, those spawned meanwhile too (failures are the tasks' own)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
