"""The batching window: items of one group wait together until the window closes or the batch
is full, then go as one call.

A batch opens with its first item and closes ``window_s`` later, or at once when it reaches
``max_items``; the next item of the group opens a new batch. The call runs as a task of its
own, so a caller that gives up waiting (a client that disconnects) never cancels the call the
others wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Send = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


@dataclass(eq=False)
class _Batch(Generic[T, R]):
    items: list[T] = field(default_factory=list)
    futures: list[asyncio.Future[R]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Windows(Generic[T, R]):
    """Open batches by group. ``send`` gets a closed batch's items and returns one result per
    item, in order; if it raises, every item of the batch gets the exception."""

    def __init__(self, send: Send[T, R], *, window_s: float, max_items: int) -> None:
        if max_items < 1 or window_s < 0:
            raise ValueError("a window needs max_items >= 1 and window_s >= 0")
        self._send = send
        self.window_s = window_s
        self.max_items = max_items
        self._open: dict[str, _Batch[T, R]] = {}
        self._calls: set[asyncio.Task[None]] = set()

    async def join(self, group: str, item: T) -> R:
        """Wait for ``item``'s result from the call its batch makes."""
        loop = asyncio.get_running_loop()
        batch = self._open.get(group)
        if batch is None:
            batch = self._open[group] = _Batch()
            batch.timer = loop.call_later(self.window_s, self._close, group, batch)
        future: asyncio.Future[R] = loop.create_future()
        batch.items.append(item)
        batch.futures.append(future)
        if len(batch.items) >= self.max_items:
            self._close(group, batch)
        return await asyncio.shield(future)

    @property
    def waiting(self) -> int:
        """Items in batches not yet sent."""
        return sum(len(b.items) for b in self._open.values())

    def _close(self, group: str, batch: _Batch[T, R]) -> None:
        if self._open.get(group) is batch:
            del self._open[group]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if not batch.items:
            return
        items, futures = batch.items, batch.futures
        batch.items, batch.futures = [], []
        task = asyncio.get_running_loop().create_task(self._call(items, futures))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, items: list[T], futures: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._send(items)
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} results for {len(items)} items")
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError())
            for future in futures:  # nobody may be left to retrieve it
                if future.done() and not future.cancelled():
                    future.exception()
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Send what waits now, and wait for the calls under way."""
        for group, batch in list(self._open.items()):
            self._close(group, batch)
        if self._calls:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._calls, return_exceptions=True)
