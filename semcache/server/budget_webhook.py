"""Budget warnings posted to a webhook (``budgets.warn_webhook``), beside the log and metrics.

Each warning is one JSON POST, sent after the response that crossed the threshold, never in
its way::

    {"event": "budget_warning", "scope": "line", "name": "payments", "period": "week",
     "fraction": 0.8, "spent_usd": 40.2, "cap_usd": 50.0, "resets_at": "2026-12-07T00:00:00Z",
     "text": "budget: business line payments has spent 80% of its weekly cap ($40.20 of $50.00)"}

``text`` makes the body readable as it is by chat webhooks (Slack, Mattermost). A warning is
crossed once per cap, period and threshold (also across sidecars sharing a budget), so it is
posted once: a delivery that fails is tried three times, then logged and counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from semcache.budgets import LINE_PREFIX, BudgetWarning, scope_kind

logger = logging.getLogger("semcache.budgets")

ATTEMPTS = 3


def payload(warning: BudgetWarning) -> dict[str, Any]:
    kind = scope_kind(warning.scope)
    return {
        "event": "budget_warning",
        "scope": kind,
        "name": None if kind == "global" else warning.scope.removeprefix(LINE_PREFIX),
        "period": warning.period,
        "fraction": warning.fraction,
        "spent_usd": round(warning.spent_usd, 6),
        "cap_usd": warning.cap_usd,
        "resets_at": dt.datetime.fromtimestamp(warning.resets_at, dt.UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "text": warning.describe(),
    }


class BudgetWebhook:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        backoff_s: float = 1.0,
        on_delivery: Callable[[str], None] | None = None,
    ) -> None:
        """``on_delivery`` is told each warning's outcome: ``delivered`` or ``failed``."""
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._backoff_s = backoff_s
        self._on_delivery = on_delivery
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    def send(self, warnings: Iterable[BudgetWarning]) -> None:
        """Post each warning in the background."""
        for warning in warnings:
            task = asyncio.get_running_loop().create_task(self._deliver(payload(warning)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, body: dict[str, Any]) -> None:
        assert self._session is not None, "start() first"
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                async with self._session.post(self.url, json=body) as response:
                    if response.status < 300:
                        self._count("delivered")
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = repr(exc)
        logger.error("the budget webhook refused a warning %d times (%s)", ATTEMPTS, problem)
        self._count("failed")

    def _count(self, outcome: str) -> None:
        if self._on_delivery is not None:
            self._on_delivery(outcome)

    async def close(self, grace_s: float = 5.0) -> None:
        """Give warnings on their way ``grace_s`` to arrive, then stop."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
