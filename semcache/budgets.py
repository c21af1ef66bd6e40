"""Spend budgets: daily, weekly and monthly caps in USD, for all traffic, per business line
and per tenant, persisted.

::

    [budgets]
    daily_usd = 20.0
    weekly_usd = 100.0
    monthly_usd = 400.0
    tenant_daily_usd = 2.0             # every tenant (API key) gets these caps ...
    tenant_monthly_usd = 40.0
    on_exceeded = "downgrade"          # or "reject"
    downgrade_model = "gpt-4o-mini"    # where requests go once a cap is reached
    warn_at = [0.5, 0.8, 0.9]
    warn_webhook = "env:BUDGET_WEBHOOK_URL"   # also POST each warning there (JSON)

    [budgets.tenants."key-0123456789abcdef"]   # ... unless named here (see /stats)
    daily_usd = 10.0
    monthly_usd = 100.0

    [budgets.lines.payments]           # a business line: named clients sharing caps
    clients = ["checkout", "refunds"]
    weekly_usd = 50.0

A request is admitted while every cap that applies to it has room: the overall caps, its
business line's (when its tenant is in one) and its tenant's.

Spend is what the upstream's ``usage`` says at the price table's prices, added once per answer.
It lives in a diskcache (SQLite) under the cache directory, in whole micro-dollars updated in
one transaction each, so a restart or a crash loses nothing and two workers never double-count;
with ``--redis``, in Redis, for every sidecar at once (see :mod:`semcache.shared.counters`).
Days, weeks (Monday to Sunday) and months are UTC. A warning is logged, counted and posted to
``warn_webhook`` once per cap, period and threshold, also across restarts.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcache.errors import ConfigError
from semcache.shared.counters import Counters, DiskCounters
from semcache.upstream.specs import resolve_secret

logger = logging.getLogger("semcache.budgets")

MICRO = 1_000_000
GLOBAL = "global"
LINE_PREFIX = "line:"  # a business line's scope; tenants never contain ':'
PERIODS = ("day", "week", "month")
ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}
# How long a period's counters are kept after it began (long enough to look back at it).
_KEEP_S = {"day": 3 * 86_400, "week": 15 * 86_400, "month": 62 * 86_400}
_CAP_FIELDS = {"daily_usd", "weekly_usd", "monthly_usd"}


@dataclass(frozen=True)
class Caps:
    daily_usd: float | None = None
    monthly_usd: float | None = None
    weekly_usd: float | None = None

    def of(self, period: str) -> float | None:
        return {"day": self.daily_usd, "week": self.weekly_usd, "month": self.monthly_usd}[period]

    @property
    def any(self) -> bool:
        return any(self.of(period) is not None for period in PERIODS)


@dataclass(frozen=True)
class BusinessLine:
    """A named group of clients (tenants) whose spend is capped together."""

    name: str
    clients: frozenset[str]
    caps: Caps


def scope_kind(scope: str) -> str:
    """``global``, ``line`` or ``tenant``: what a scope is, for a metric label."""
    if scope == GLOBAL:
        return "global"
    return "line" if scope.startswith(LINE_PREFIX) else "tenant"


@dataclass(frozen=True)
class BudgetConfig:
    overall: Caps = field(default_factory=Caps)
    per_tenant: Caps = field(default_factory=Caps)
    tenants: Mapping[str, Caps] = field(default_factory=dict)
    on_exceeded: str = "reject"
    downgrade_model: str | None = None
    warn_at: tuple[float, ...] = (0.5, 0.8, 0.9)
    lines: tuple[BusinessLine, ...] = ()
    warn_webhook: str | None = field(default=None, repr=False)  # may hold a token

    def caps_of(self, tenant: str) -> Caps:
        return self.tenants.get(tenant, self.per_tenant)

    def line_of(self, tenant: str) -> BusinessLine | None:
        return next((line for line in self.lines if tenant in line.clients), None)

    def scopes(self, tenant: str) -> list[tuple[str, Caps]]:
        """Every scope a tenant's spend counts in, with its caps: overall, its business line
        (if any), itself."""
        scopes = [(GLOBAL, self.overall)]
        line = self.line_of(tenant)
        if line is not None:
            scopes.append((LINE_PREFIX + line.name, line.caps))
        scopes.append((tenant, self.caps_of(tenant)))
        return scopes

    @property
    def active(self) -> bool:
        caps = [self.overall, self.per_tenant, *self.tenants.values()]
        return any(c.any for c in (*caps, *(line.caps for line in self.lines)))


def parse_budgets(raw: object, environ: Mapping[str, str] | None = None) -> BudgetConfig:
    """Check a ``[budgets]`` table; ``environ`` resolves ``warn_webhook = "env:NAME"``.

    Raises:
        ConfigError: naming the field at fault.
    """
    if not isinstance(raw, dict):
        raise ConfigError("budgets must be a table ([budgets])")
    known = {
        *_CAP_FIELDS, "tenant_daily_usd", "tenant_weekly_usd", "tenant_monthly_usd",
        "on_exceeded", "downgrade_model", "warn_at", "tenants", "lines", "warn_webhook",
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
        if not isinstance(table, dict) or set(table) - _CAP_FIELDS:
            raise ConfigError(
                f"budgets.tenants.{tenant} may hold daily_usd, weekly_usd and monthly_usd only"
            )
        tenants[tenant] = _caps(table, f"budgets.tenants.{tenant}.")
    return BudgetConfig(
        overall=_caps(raw, "budgets."),
        per_tenant=_caps(raw, "budgets.", prefix="tenant_"),
        tenants=tenants,
        on_exceeded=on_exceeded,
        downgrade_model=downgrade_model,
        warn_at=tuple(sorted(float(w) for w in warn_at)),
        lines=_lines(raw.get("lines", {})),
        warn_webhook=_webhook(raw.get("warn_webhook"), environ or {}),
    )


def _caps(table: Mapping[str, object], where: str, prefix: str = "") -> Caps:
    def usd(period: str) -> float | None:
        name = f"{prefix}{ADJECTIVES[period]}_usd"
        return _usd(table.get(name), where + name)

    return Caps(daily_usd=usd("day"), weekly_usd=usd("week"), monthly_usd=usd("month"))


def _lines(raw: object) -> tuple[BusinessLine, ...]:
    if not isinstance(raw, dict):
        raise ConfigError("budgets.lines must be a table of tables ([budgets.lines.<name>])")
    lines = []
    owner: dict[str, str] = {}
    for name, table in raw.items():
        where = f"budgets.lines.{name}"
        if not isinstance(table, dict) or set(table) - (_CAP_FIELDS | {"clients"}):
            raise ConfigError(f"{where} may hold clients, daily_usd, weekly_usd and monthly_usd")
        clients = table.get("clients")
        if not isinstance(clients, list) or not clients:
            raise ConfigError(f"{where}.clients must be a non-empty list of client names")
        for client in clients:
            if not isinstance(client, str) or not client or ":" in client:
                raise ConfigError(f"{where}.clients must be client names, got {client!r}")
            if client in owner:
                raise ConfigError(
                    f"client {client!r} is in two business lines ({owner[client]}, {name})"
                )
            owner[client] = name
        lines.append(BusinessLine(name, frozenset(clients), _caps(table, where + ".")))
    return tuple(lines)


def _webhook(raw: object, environ: Mapping[str, str]) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ConfigError("budgets.warn_webhook must be a URL (or env:NAME)")
    url = resolve_secret(raw, environ, "budgets.warn_webhook")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("budgets.warn_webhook must be an http(s) URL")
    return url


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
    """A cap that is reached: who (``global``, ``line:<name>`` or a tenant), which period, and
    when it resets."""

    scope: str
    period: str  # "day", "week" or "month"
    cap_usd: float
    spent_usd: float
    resets_at: float  # seconds since the epoch

    def message(self) -> str:
        kind = scope_kind(self.scope)
        who = {
            "global": "the sidecar's",
            "line": f"the business line {self.scope.removeprefix(LINE_PREFIX)!r}'s",
            "tenant": "this API key's",
        }[kind]
        return (
            f"{who} {ADJECTIVES[self.period]} budget of "
            f"${self.cap_usd:.2f} is spent (${self.spent_usd:.2f}); it resets at "
            f"{dt.datetime.fromtimestamp(self.resets_at, dt.UTC):%Y-%m-%d %H:%M} UTC"
        )


@dataclass(frozen=True)
class BudgetWarning:
    scope: str  # "global", "line:<name>" or a tenant
    period: str
    fraction: float
    spent_usd: float
    cap_usd: float
    resets_at: float

    def describe(self) -> str:
        who = {
            "global": "the sidecar",
            "line": f"business line {self.scope.removeprefix(LINE_PREFIX)}",
            "tenant": f"tenant {self.scope}",
        }[scope_kind(self.scope)]
        return (
            f"budget: {who} has spent {100 * self.spent_usd / self.cap_usd:.0f}% of its "
            f"{ADJECTIVES[self.period]} cap (${self.spent_usd:.2f} of ${self.cap_usd:.2f})"
        )


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
        self._seen: dict[str, float] = {}  # counter key -> USD, as last read or added here

    def close(self) -> None:
        self._counters.close()

    def _periods(self, now: float) -> dict[str, tuple[str, float]]:
        """Period → (label, reset time) for ``now``."""
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        tomorrow = midnight + dt.timedelta(days=1)
        next_monday = midnight + dt.timedelta(days=7 - midnight.weekday())
        first = midnight.replace(day=1)
        next_month = (first + dt.timedelta(days=32)).replace(day=1)
        return {
            "day": (moment.strftime("%Y-%m-%d"), tomorrow.timestamp()),
            "week": (moment.strftime("%G-W%V"), next_monday.timestamp()),
            "month": (moment.strftime("%Y-%m"), next_month.timestamp()),
        }

    def spent(self, scope: str, period: str) -> float:
        """USD spent by ``scope`` (``global``, ``line:<name>`` or a tenant) in the current
        ``period``."""
        label, _ = self._periods(self._clock())[period]
        key = f"spend:{label}:{scope}"
        self._seen[key] = self._counters.get(key) / MICRO
        return self._seen[key]

    def last_seen(self, scope: str, period: str) -> float:
        """What :meth:`spent` would say, as this ledger last read or added it, with no read:
        for gauges scraped at any time (a new period starts at 0; spend added by another
        sidecar sharing the ledger shows from this one's next read or answer)."""
        label, _ = self._periods(self._clock())[period]
        return self._seen.get(f"spend:{label}:{scope}", 0.0)

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
        for scope, caps in self.config.scopes(tenant):
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
        for scope, caps in self.config.scopes(tenant):
            for period, (label, resets_at) in self._periods(now).items():
                key = f"spend:{label}:{scope}"
                total = self._counters.incr(key, micro, ttl_s=_KEEP_S[period]) / MICRO
                self._seen[key] = total
                cap = caps.of(period)
                if not cap:
                    continue
                for fraction in (*self.config.warn_at, 1.0):
                    if total / cap >= fraction and self._counters.mark(
                        f"warned:{label}:{scope}:{fraction}", ttl_s=_KEEP_S[period]
                    ):
                        warnings.append(
                            BudgetWarning(scope, period, fraction, total, cap, resets_at)
                        )
        for warning in warnings:
            logger.warning("%s", warning.describe())
        return warnings

    def capped_scopes(self) -> list[tuple[str, Caps]]:
        """The overall scope and every business line, with their caps (tenants are many and
        are not listed: their spend is seen per request)."""
        return [
            (GLOBAL, self.config.overall),
            *((LINE_PREFIX + line.name, line.caps) for line in self.config.lines),
        ]

    def describe(self) -> dict[str, Any]:
        """Spend against the overall caps and the business lines' caps, for ``/stats``."""

        def spend(scope: str, caps: Caps) -> dict[str, Any]:
            return {
                period: {"spent_usd": self.spent(scope, period), "cap_usd": caps.of(period)}
                for period in PERIODS
            }

        return {
            **spend(GLOBAL, self.config.overall),
            "lines": {
                line.name: spend(LINE_PREFIX + line.name, line.caps) for line in self.config.lines
            },
        }
