"""The exchange: one request's journey through the cached endpoints, carried from stage to
stage. It keeps two bodies apart: ``body``, what the cache keys on (the request as the client
sent it, re-keyed only by a budget downgrade, see :mod:`.transform`), and ``outgoing``, what the
upstream receives (after the rewrites of :mod:`.transform`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from semcache.compression import Compressed, Mode
from semcache.decision import Decision
from semcache.dialects import Dialect, Parsed
from semcache.keys import CacheRequest
from semcache.server.controls import ANONYMOUS, Controls
from semcache.server.state import State
from semcache.upstream.router import PRIORITIES, Attempt


@dataclass(eq=False)
class Exchange:
    request: web.Request
    state: State
    dialect: Dialect
    body: dict[str, Any] = field(default_factory=dict)
    outgoing: dict[str, Any] = field(default_factory=dict)
    parsed: Parsed | None = None
    asked: CacheRequest | None = None  # the cache request as asked, before a budget re-keyed it
    controls: Controls = field(default_factory=Controls)
    tenant: str = ANONYMOUS
    priority: int = PRIORITIES["normal"]
    deferred: bool = False  # X-Semcache-Priority: batch, a miss goes to a provider batch job
    compression: Mode = Mode.OFF  # asked for by the header, else the setting
    compressed: Compressed | None = None  # what compression made of the history
    headers: dict[str, str] = field(default_factory=dict)  # what semcache says of the request
    outcome: str = "error"  # hit | miss | bypass, for the metrics
    decision: Decision | None = None
    storable: bool = True  # False: no-store, a bypass, or a cache fault
    hide_usage: bool = False  # the usage event was asked for by us, not by the client
    leader_key: str | None = None  # this request leads identical concurrent misses
    flight_key: str | None = None  # ... and leads them on every sidecar (--redis)
    attempt: Attempt | None = None  # the upstream answer being read
    upstream: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    received: dict[str, Any] | None = None  # what the upstream answered, complete or not
    answer: dict[str, Any] | None = None  # the same when complete, valid and storable
    response: web.StreamResponse | None = None
    accounted: bool = False
    storing: bool = False  # the answer is being stored after the response (see store)
    started: float = field(default_factory=time.perf_counter)
    _first_event_seen: bool = False

    def first_event(self) -> None:
        """A streamed answer's first event reached the client: time to first token."""
        if not self._first_event_seen:
            self._first_event_seen = True
            self.state.metrics.time_to_first_token.labels(self.dialect.path, self.outcome).observe(
                time.perf_counter() - self.started
            )

    @property
    def cache_request(self) -> CacheRequest | None:
        return None if self.parsed is None else self.parsed.request
