"""What the handlers share, kept on the application under one typed key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from semcache.budgets import SpendLedger
from semcache.cache import SemanticCache
from semcache.coalescing import Coalescer
from semcache.lookup_batching import LookupBatcher
from semcache.metrics import Metrics
from semcache.pricing import PriceTable
from semcache.server.after_response import AfterResponse
from semcache.server.compression import ContextCompression
from semcache.server.shadow_checks import ShadowChecks
from semcache.server.status_history import StatusHistory
from semcache.settings import ServerConfig
from semcache.upstream.health import HealthChecks
from semcache.upstream.router import Router

if TYPE_CHECKING:
    from semcache.server.batch_jobs import BatchJobs
    from semcache.server.budget_webhook import BudgetWebhook
    from semcache.server.request_batching import RequestBatching
    from semcache.shared.flights import SharedFlights


@dataclass
class State:
    config: ServerConfig
    cache: SemanticCache
    router: Router
    ledger: SpendLedger | None
    batcher: LookupBatcher
    coalescer: Coalescer
    metrics: Metrics
    prices: PriceTable
    shadow: ShadowChecks
    compression: ContextCompression
    batching: RequestBatching
    batch_jobs: BatchJobs
    status: StatusHistory  # the status page's last hour
    flights: SharedFlights | None = None  # single-flight across sidecars (--redis)
    after_response: AfterResponse = field(default_factory=AfterResponse)
    budget_webhook: BudgetWebhook | None = None  # budgets.warn_webhook
    health: HealthChecks | None = None  # health_check_interval_s > 0


STATE: web.AppKey[State] = web.AppKey("semcache_state", State)
# The name of the client a request came from, when the sidecar has [[clients]].
CLIENT: web.RequestKey[str] = web.RequestKey("semcache_client", str)
