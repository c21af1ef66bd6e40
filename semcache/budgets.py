"""Spend budgets: daily and monthly caps in USD, for all traffic and per tenant, persisted.

::

    [budgets]
    daily_usd = 20.0
    monthly_usd = 400.0
    tenant_daily_usd = 2.0             # every tenant (API key) gets these caps ...
    tenant_monthly_usd = 40.0
    on_exceeded = "downgrade"          # or "reject"
    downgrade_model = "gpt-4o-mini"    # where requests go once a cap is reached
    warn_at = [0.5, 0.8, 0.9]

    [budgets.tenants."key-0123456789abcdef"]   # ... unless named here (see /stats)
    daily_usd = 10.0
    monthly_usd = 100.0

Spend is what the upstream's ``usage`` says at the price table's prices, added once per answer.
It lives in a diskcache (SQLite) under the cache directory, in whole micro-dollars updated in
one transaction each, so a restart or a crash loses nothing and two workers never double-count;
with ``--redis``, in Redis, for every sidecar at once (see :mod:`semcache.shared.counters`).
Days and months are UTC. A warning is logged and counted once per cap, period and threshold,
also across restarts.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcache.errors import ConfigError
from semcache.shared.counters import Counters, DiskCounters

logger = logging.getLogger("semcache.budgets")

MICRO = 1_000_000
GLOBAL = "global"
# How long a period's counters are kept after it began (long enough to look back at it).
_KEEP_S = {"day": 3 * 86_400, "month": 62 * 86_400}


@dataclass(frozen=True)
class Caps:
    daily_usd: float | None = None
    monthly_usd: float | None = None

    def of(self, period: str) -> float | None:
        return self.daily_usd if period == "day" else self.monthly_usd


@dataclass(frozen=True)
class BudgetConfig:
    overall: Caps = field(default_factory=Caps)
    per_tenant: Caps = field(default_factory=Caps)
    tenants: Mapping[str, Caps] = field(default_factory=dict)
    on_exceeded: str = "reject"
    downgrade_model: str | None = None
    warn_at: tuple[float, ...] = (0.5, 0.8, 0.9)

    def caps_of(self, tenant: str) -> Caps:
        return self.tenants.get(tenant, self.per_tenant)

    @property
    def active(self) -> bool:
        caps = [self.overall, self.per_tenant, *self.tenants.values()]
        return any(c.daily_usd is not None or c.monthly_usd is not None for c in caps)


def parse_budgets(raw: object) -> BudgetConfig:
    """Check a ``[budgets]`` table.

    Raises:
        ConfigError: naming the field at fault.
    """
    if not isinstance(raw, dict):
        raise ConfigError("budgets must be a table ([budgets])")
    known = {
        "daily_usd", "monthly_usd", "tenant_daily_usd", "tenant_monthly_usd", "on_exceeded",
        "downgrade_model", "warn_at", "tenants",
    }  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"budgets: unknown field(s) {', '.join(unknown)}")
    on_exceeded = raw.get("on_exceeded", "reject")
    if on_exceeded not in ("reject", "downgrade"):
        raise ConfigError("budgets.on_exceeded must be 'reject' or 'downgrade'")
    downgrade_model = raw.get("downgrade_model")
    if on_exceeded == "downgrade" and (not isinstance(downgrade_model, str) or not downgrade_model):
        raise ConfigError("budgets.on_exceeded = 'downgrade' needs budgets.downgrade_model")
    warn_at = raw.get("warn_at", [0.5, 0.8, 0.9])
    if not isinstance(warn_at, list) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < 1 for w in warn_at
    ):
        raise ConfigError("budgets.warn_at must be a list of fractions between 0 and 1")
    tenants_raw = raw.get("tenants", {})
    if not isinstance(tenants_raw, dict):
        raise ConfigError("budgets.tenants must be a table of tables")
    tenants = {}
    for tenant, table in tenants_raw.items():
        if not isinstance(table, dict) or set(table) - {"daily_usd", "monthly_usd"}:
            raise ConfigError(f"budgets.tenants.{tenant} may hold daily_usd and monthly_usd only")
        tenants[tenant] = Caps(
            _usd(table.get("daily_usd"), f"budgets.tenants.{tenant}.daily_usd"),
            _usd(table.get("monthly_usd"), f"budgets.tenants.{tenant}.monthly_usd"),
        )
    return BudgetConfig(
        overall=Caps(
            _usd(raw.get("daily_usd"), "budgets.daily_usd"),
            _usd(raw.get("monthly_usd"), "budgets.monthly_usd"),
        ),
        per_tenant=Caps(
            _usd(raw.get("tenant_daily_usd"), "budgets.tenant_daily_usd"),
            _usd(raw.get("tenant_monthly_usd"), "budgets.tenant_monthly_usd"),
        ),
        tenants=tenants,
        on_exceeded=on_exceeded,
        downgrade_model=downgrade_model,
        warn_at=tuple(sorted(float(w) for w in warn_at)),
    )


def _usd(value: object, name: str) -> float | None:
    if value is None:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{name} must be a non-negative amount in USD")
    return float(value)


@dataclass(frozen=True)
class Exceeded:
    """A cap that is reached: who (``global`` or a tenant), which period, and when it resets."""

    scope: str
    period: str  # "day" or "month"
    cap_usd: float
    spent_usd: float
    resets_at: float  # seconds since the epoch

    def message(self) -> str:
        who = "the sidecar's" if self.scope == GLOBAL else "this API key's"
        return (
            f"{who} {'daily' if self.period == 'day' else 'monthly'} budget of "
            f"${self.cap_usd:.2f} is spent (${self.spent_usd:.2f}); it resets at "
            f"{dt.datetime.fromtimestamp(self.resets_at, dt.UTC):%Y-%m-%d %H:%M} UTC"
        )


@dataclass(frozen=True)
class BudgetWarning:
    scope: str
    period: str
    fraction: float
    spent_usd: float
    cap_usd: float


@dataclass(frozen=True)
class Admission:
    """What to do with a request: send it as is, send it to ``model`` instead, or refuse."""

    model: str
    exceeded: Exceeded | None = None
    downgraded: bool = False

    @property
    def refused(self) -> bool:
        return self.exceeded is not None and not self.downgraded


class SpendLedger:
    """Spend per scope and period, persisted in ``directory``."""

    def __init__(
        self,
        directory: Path,
        config: BudgetConfig,
        *,
        clock: Callable[[], float],
        counters: Counters | None = None,
    ) -> None:
        """``counters``: where spend is kept (default: a diskcache in ``directory``; shared by
        several sidecars: :class:`~semcache.shared.counters.SharedCounters`).

        Raises:
            StoreError: the ledger cannot be opened.
        """
        self.config = config
        self._clock = clock
        self._counters = counters if counters is not None else DiskCounters(directory)

    def close(self) -> None:
        self._counters.close()

    def _periods(self, now: float) -> dict[str, tuple[str, float]]:
        """Period → (label, reset time) for ``now``."""
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        tomorrow = midnight + dt.timedelta(days=1)
        first = midnight.replace(day=1)
        next_month = (first + dt.timedelta(days=32)).replace(day=1)
        return {
            "day": (moment.strftime("%Y-%m-%d"), tomorrow.timestamp()),
            "month": (moment.strftime("%Y-%m"), next_month.timestamp()),
        }

    def spent(self, scope: str, period: str) -> float:
        """USD spent by ``scope`` (``global`` or a tenant) in the current ``period``."""
        label, _ = self._periods(self._clock())[period]
        return self._counters.get(f"spend:{label}:{scope}") / MICRO

    def admit(self, tenant: str, model: str) -> Admission:
        """Check the caps before a request is sent."""
        exceeded = self._first_exceeded(tenant)
        if exceeded is None:
            return Admission(model)
        target = self.config.downgrade_model
        if self.config.on_exceeded == "downgrade" and target is not None and target != model:
            return Admission(target, exceeded, downgraded=True)
        if self.config.on_exceeded == "downgrade" and target == model:
            return Admission(model, exceeded, downgraded=True)  # already the cheaper model
        return Admission(model, exceeded)

    def _first_exceeded(self, tenant: str) -> Exceeded | None:
        now = self._clock()
        for scope, caps in ((GLOBAL, self.config.overall), (tenant, self.config.caps_of(tenant))):
            for period, (label, resets_at) in self._periods(now).items():
                cap = caps.of(period)
                if cap is None:
                    continue
                spent = self._counters.get(f"spend:{label}:{scope}") / MICRO
                if spent >= cap:
                    return Exceeded(scope, period, cap, spent, resets_at)
        return None

    def record(self, tenant: str, cost_usd: float) -> list[BudgetWarning]:
        """Add an answer's cost; returns the warnings it crossed for the first time."""
        if cost_usd <= 0:
            return []
        micro = round(cost_usd * MICRO)
        warnings = []
        now = self._clock()
        for scope, caps in ((GLOBAL, self.config.overall), (tenant, self.config.caps_of(tenant))):
            for period, (label, _) in self._periods(now).items():
                key = f"spend:{label}:{scope}"
                total = self._counters.incr(key, micro, ttl_s=_KEEP_S[period]) / MICRO
                cap = caps.of(period)
                if not cap:
                    continue
                for fraction in (*self.config.warn_at, 1.0):
                    if total / cap >= fraction and self._counters.mark(
                        f"warned:{label}:{scope}:{fraction}", ttl_s=_KEEP_S[period]
                    ):
                        warnings.append(BudgetWarning(scope, period, fraction, total, cap))
        for warning in warnings:
            logger.warning(
                "budget: %s has spent %.0f%% of its %s cap ($%.2f of $%.2f)",
                "the sidecar" if warning.scope == GLOBAL else f"tenant {warning.scope}",
                100 * warning.spent_usd / warning.cap_usd,
                "daily" if warning.period == "day" else "monthly",
                warning.spent_usd,
                warning.cap_usd,
            )
        return warnings

    def describe(self) -> dict[str, Any]:
        """Spend against the global caps, for ``/stats``."""
        return {
            period: {
                "spent_usd": self.spent(GLOBAL, period),
                "cap_usd": self.config.overall.of(period),
            }
            for period in ("day", "month")
        }
