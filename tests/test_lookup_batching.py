"""Lookup micro-batching: no wait at an idle cache, batches under load, one per core at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from semcache.decision import Decision
from semcache.keys import CacheRequest
from semcache.lookup_batching import LookupBatcher
from semcache.policy import Reason


class GatedRuns:
    """Runs batches only when let through, recording their sizes and how many ran at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sizes: list[int] = []
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, requests: Sequence[CacheRequest]) -> list[Decision]:
        self.sizes.append(len(requests))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return [Decision(hit=None, reason=Reason.BELOW_THRESHOLD) for _ in requests]


async def test_a_lookup_at_an_idle_cache_does_not_wait_for_company() -> None:
    runs = GatedRuns()
    runs.gate.set()
    batcher = LookupBatcher(runs, max_wait_ms=60_000, max_size=32, in_flight=2)
    try:
        decision = await asyncio.wait_for(batcher.lookup(CacheRequest(prompt="alone")), 5)
    finally:
        await batcher.close()
    assert decision.reason is Reason.BELOW_THRESHOLD and runs.sizes == [1]


async def test_under_load_lookups_share_batches_and_batches_run_side_by_side() -> None:
    runs = GatedRuns()
    batcher = LookupBatcher(runs, max_wait_ms=20, max_size=8, in_flight=2)
    try:
        first = []
        for running in (1, 2):  # one lookup, then another that finds a batch running
            first.append(asyncio.ensure_future(batcher.lookup(CacheRequest(prompt="a"))))
            for _ in range(100):
                if runs.running == running:
                    break
                await asyncio.sleep(0.01)
        # Two batches hold both slots; what comes now waits and forms full batches.
        later = [
            asyncio.ensure_future(batcher.lookup(CacheRequest(prompt=f"q{i}"))) for i in range(16)
        ]
        await asyncio.sleep(0.1)
        runs.gate.set()
        decisions = await asyncio.wait_for(asyncio.gather(*first, *later), 5)
    finally:
        await batcher.close()
    assert len(decisions) == 18 and runs.most_at_once == 2
    assert runs.sizes == [1, 1, 8, 8]  # the 16 later ones, in two full batches


async def test_a_busy_model_is_skipped_only_while_lookups_rarely_hit() -> None:
    runs = GatedRuns()
    batcher = LookupBatcher(
        runs, max_wait_ms=0, max_size=1, in_flight=1, busy_wait_ms=10, busy_hit_rate=0.05
    )
    runs.gate.set()
    await batcher.lookup(CacheRequest(prompt="measure"))  # learns a time per lookup
    assert not batcher.busy()  # no backlog
    batcher._seconds_per_lookup = 0.05  # as if each lookup took the model 50 ms
    runs.gate.clear()
    waiting = [
        asyncio.ensure_future(batcher.lookup(CacheRequest(prompt=f"q{i}"))) for i in range(4)
    ]
    await asyncio.sleep(0.05)
    assert batcher.expected_wait_s() > 0.01
    batcher.hit_rate = 0.5
    assert not batcher.busy()  # lookups often hit: they wait for the model
    batcher.hit_rate = 0.0
    skipped = [batcher.busy() for _ in range(16)]
    assert skipped.count(True) == 14  # one in eight still goes through, to keep measuring
    runs.gate.set()
    await asyncio.gather(*waiting)
    assert batcher.expected_wait_s() == 0 and not batcher.busy()
    await batcher.close()


async def test_idle_only_while_no_lookup_is_queued_or_running() -> None:
    runs = GatedRuns()
    batcher = LookupBatcher(runs, max_wait_ms=20, max_size=8, in_flight=2)
    try:
        assert batcher.idle()
        waiting = asyncio.ensure_future(batcher.lookup(CacheRequest(prompt="a")))
        for _ in range(100):
            if runs.running:
                break
            await asyncio.sleep(0.01)
        assert not batcher.idle()
        runs.gate.set()
        await asyncio.wait_for(waiting, 5)
        for _ in range(100):  # the batch's task ends just after its waiter is answered
            if batcher.idle():
                break
            await asyncio.sleep(0.01)
        assert batcher.idle()
    finally:
        await batcher.close()
