"""Micro-batching of lookups: concurrent requests share one embedding call.

A forward pass of the model over 32 short prompts costs little more than over one, so under
concurrent load (while a batch is running) the sidecar gathers lookups for at most
``max_wait_ms`` (or until ``max_size`` are waiting) and runs them as one
:meth:`SemanticCache.lookup_many` on a worker thread; a lookup that finds the cache idle goes
at once. Up to
``in_flight`` batches run at once (one per core by default: the ONNX backend runs each call on
one thread, so two batches use two cores); lookups that arrive meanwhile form the next one.

Under overload the batcher also says when waiting for the model is not worth it
(:meth:`LookupBatcher.busy`): the backlog would hold a lookup longer than ``busy_wait_ms`` and
recent lookups rarely hit. The sidecar then sends such a miss upstream at once, without the
semantic tier; it never turns a miss into a hit, so it costs hits only in proportion to the
(low) hit rate it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence

from semcache.decision import Decision
from semcache.keys import CacheRequest

RunBatch = Callable[[Sequence[CacheRequest]], Awaitable[list[Decision]]]


class LookupBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_wait_ms: float,
        max_size: int,
        in_flight: int | None = None,
        busy_wait_ms: float | None = None,
        busy_hit_rate: float = 0.05,
    ) -> None:
        self._run_batch = run_batch
        self._in_flight = in_flight or os.cpu_count() or 1
        self._slots = asyncio.Semaphore(self._in_flight)
        self.busy_wait_s = None if busy_wait_ms is None else busy_wait_ms / 1000
        self.busy_hit_rate = busy_hit_rate
        self._queued = 0  # lookups waiting or running
        self._seconds_per_lookup = 0.0  # moving average of the model's time per lookup
        self.hit_rate = 1.0  # moving average over the lookups that reached the model
        self._skipped = 0
        self._running: set[asyncio.Task[None]] = set()
        self.max_wait_s = max_wait_ms / 1000
        self.max_size = max_size
        self._pending: list[tuple[CacheRequest, asyncio.Future[Decision]]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []  # the latest batch sizes, for tests and metrics
        self.on_batch: Callable[[int], None] | None = None

    def expected_wait_s(self) -> float:
        """How long a lookup asked now would wait for the model, by the backlog."""
        return self._queued * self._seconds_per_lookup / self._in_flight

    def idle(self) -> bool:
        """Whether no lookup is queued or running: one embedded now waits for nothing."""
        return self._queued == 0 and not self._running

    def backlogged(self) -> bool:
        """Whether a lookup asked now would wait for the model longer than ``busy_wait_ms``."""
        return self.busy_wait_s is not None and self.expected_wait_s() > self.busy_wait_s

    def busy(self) -> bool:
        """Whether a lookup should skip the semantic tier: the model's backlog would hold it
        longer than ``busy_wait_ms`` while recent lookups rarely hit (below ``busy_hit_rate``),
        so waiting would delay nearly every request to save almost none. One lookup in eight
        goes through anyway, so the hit rate keeps being measured."""
        if not self.backlogged() or self.hit_rate >= self.busy_hit_rate:
            return False
        self._skipped += 1
        return self._skipped % 8 != 0

    async def lookup(self, request: CacheRequest) -> Decision:
        self._queued += 1
        try:
            if self.max_wait_s == 0 or self.max_size == 1:
                started = time.perf_counter()
                decisions = await self._run_batch([request])
                self._learn(decisions, time.perf_counter() - started)
                self._record(1)
                return decisions[0]
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._work())
            future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
            self._pending.append((request, future))
            self._wakeup.set()
            return await future
        finally:
            self._queued -= 1

    def _learn(self, decisions: Sequence[Decision], seconds: float) -> None:
        """Fold a batch's time and hits into the moving averages."""
        if not decisions:
            return
        weight = min(1.0, len(decisions) / 50)
        per_lookup = seconds / len(decisions)
        if self._seconds_per_lookup == 0:
            self._seconds_per_lookup = per_lookup
        else:
            self._seconds_per_lookup += 0.2 * (per_lookup - self._seconds_per_lookup)
        hits = sum(1 for d in decisions if d.hit is not None) / len(decisions)
        self.hit_rate += weight * (hits - self.hit_rate)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for task in list(self._running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    def _record(self, size: int) -> None:
        self.batch_sizes = [*self.batch_sizes[-999:], size]
        if self.on_batch is not None:
            self.on_batch(size)

    async def _work(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._running and len(self._pending) < self.max_size:
                # Under load (a batch is running), wait a little for company; a lookup that
                # comes to an idle cache goes at once and pays no wait.
                await asyncio.sleep(self.max_wait_s)
            await self._slots.acquire()  # a batch forms while the slots are busy
            batch = self._pending[: self.max_size]
            self._pending = self._pending[self.max_size :]
            if not self._pending:
                self._wakeup.clear()
            live = [(request, future) for request, future in batch if not future.done()]
            if not live:
                self._slots.release()
                continue
            self._record(len(live))
            task = asyncio.get_running_loop().create_task(self._run(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, live: list[tuple[CacheRequest, asyncio.Future[Decision]]]) -> None:
        try:
            started = time.perf_counter()
            decisions = await self._run_batch([request for request, _ in live])
            self._learn(decisions, time.perf_counter() - started)
        except asyncio.CancelledError:  # closing: nobody is left to answer them
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:  # every waiter sees the failure and fails open
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._slots.release()
        for (_, future), decision in zip(live, decisions, strict=True):
            if not future.done():
                future.set_result(decision)
