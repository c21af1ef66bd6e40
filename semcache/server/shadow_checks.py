"""Shadow checks in the sidecar: a sampled hit is sent upstream as well, in the background,
and the answer served compared with the fresh one (see :mod:`semcache.shadow`).

The client has its answer before the check starts and never waits for it. The check goes
through the router like any miss (the caller's credentials or a pool key, at low priority so
it never delays real traffic), asks for a non-streamed answer, and is paid for like one:
``shadow_fraction`` is the price of the estimate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from semcache.cache import SemanticCache
from semcache.decision import Decision
from semcache.dialects import Dialect
from semcache.keys import CacheRequest
from semcache.metrics import Metrics
from semcache.shadow import ShadowSampler
from semcache.upstream.router import PRIORITIES, Attempt, Router

# (attempt, model, complete answer or None, tenant, dialect) -> None: settle and add the cost.
Accountant = Callable[[Attempt, str, dict[str, Any] | None, str, Dialect], None]

logger = logging.getLogger("semcache.shadow")


class ShadowChecks:
    def __init__(
        self,
        *,
        fraction: float,
        agreement: float,
        cache: SemanticCache,
        router: Router,
        metrics: Metrics,
        account: Accountant,
        sampler: ShadowSampler | None = None,
    ) -> None:
        self.sampler = sampler or ShadowSampler(fraction)
        self.agreement = agreement
        self._cache = cache
        self._router = router
        self._metrics = metrics
        self._account = account
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe_check(
        self,
        dialect: Dialect,
        headers: Mapping[str, str],
        body: dict[str, Any],
        served: dict[str, Any],
        entry_id: int,
        tenant: str,
        labelled: tuple[CacheRequest, Decision] | None = None,
    ) -> None:
        """Start a check of this hit in the background when the sample picks it; its verdict
        also labels the hit (``labelled``: the lookup and its decision) for the error bound."""
        if not self.sampler.should_check():
            return
        task = asyncio.get_running_loop().create_task(
            self._check(dialect, dict(headers), body, served, entry_id, tenant, labelled)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(
        self,
        dialect: Dialect,
        headers: dict[str, str],
        body: dict[str, Any],
        served: dict[str, Any],
        entry_id: int,
        tenant: str,
        labelled: tuple[CacheRequest, Decision] | None = None,
    ) -> None:
        fresh_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        model = str(body.get("model"))
        try:
            async with self._router.send(
                "POST",
                dialect.path,
                headers=headers,
                body=orjson.dumps(fresh_body),
                model=model,
                tokens=dialect.request_tokens(fresh_body),
                priority=PRIORITIES["low"],
                api=dialect.api,
            ) as attempt:
                data = await attempt.response.read()
                status = attempt.response.status
                answer = orjson.loads(data) if status == 200 else None
                self._account(attempt, model, answer, tenant, dialect)
            if answer is None:
                raise ValueError(f"upstream answered {status}")
            fresh = dialect.answer_text(answer)
            served_text = dialect.answer_text(served)
            verdict = await self._cache.acompare_answers(served_text, fresh, self.agreement)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.info("shadow check of entry %d failed: %s", entry_id, exc)
            self._metrics.shadow_checks.labels("failed").inc()
            return
        self.sampler.record(verdict)
        if labelled is not None and self.sampler.fraction > 0:
            # One hit in 1/fraction is checked: its label stands for that many.
            request, decision = labelled
            weight = 1 / self.sampler.fraction
            if self._cache.feedback(request, decision, right=verdict.agree, weight=weight):
                self._metrics.error_bound_labels.labels("shadow").inc()
        self._metrics.shadow_checks.labels("agree" if verdict.agree else "disagree").inc()
        rate = self.sampler.false_hit_rate()
        if rate is not None:
            self._metrics.shadow_false_hit_rate.set(rate)
        if not verdict.agree:
            logger.warning(
                "shadow check: entry %d disagrees with the upstream's answer now (similarity "
                "%.2f); review it, and POST /admin/entries/%d/wrong if it is wrong",
                entry_id,
                verdict.similarity,
                entry_id,
            )

    async def drain(self) -> None:
        """Wait for the checks in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.drain()
