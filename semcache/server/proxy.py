"""The sidecar's endpoints under ``/v1``: the cached API shapes, and everything else forwarded.

A request to a cached endpoint takes one of three paths, named in the ``X-Semcache`` response
header:

- ``hit``: answered from the cache, as JSON or replayed as the API's stream;
- ``miss``: forwarded upstream; the answer reaches the client as it arrives and is stored once
  complete and valid;
- ``bypass``: not safely cacheable (a tool result last, non-text parts, no credentials) or the
  cache failed; forwarded untouched, nothing stored.

The stages of that path are in :mod:`semcache.server.pipeline`; the API shapes in
:mod:`semcache.dialects`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from semcache.dialects import CHAT, Dialect
from semcache.server import accounting, azure_paths, pipeline
from semcache.server.controls import ANONYMOUS, parse_priority, tenant_of
from semcache.server.state import CLIENT, STATE


def cached_endpoint(dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one cached API shape: the pipeline, timed and counted by outcome."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        started = time.perf_counter()
        exchange = pipeline.Exchange(request, state, dialect)
        outcome = "error"  # unless the pipeline ends with an answer
        try:
            response = await pipeline.run(exchange)
            outcome = exchange.outcome
            return response
        finally:
            # By the API's own path: an Azure client's path names its deployment, and
            # labels must not multiply with what clients write.
            state.metrics.requests.labels(dialect.path, outcome).inc()
            state.metrics.latency.labels(dialect.path, outcome).observe(
                time.perf_counter() - started
            )

    return endpoint


async def forward_verbatim(request: web.Request) -> web.StreamResponse:
    """Any other ``/v1/*`` path (also as Azure OpenAI's clients write it): relayed through the
    router, streaming in both directions. A deployment path is sent as the ``/v1`` path of its
    model (named in the body when the client did not), which the router maps back to the
    deployment on an azure upstream."""
    state = request.app[STATE]
    body = await request.read()
    path = azure_paths.v1_path(request)
    model = None
    if body:
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body)
            named = azure_paths.with_model_in_path(request, state.router.upstreams, parsed)
            if named is not parsed:
                body = orjson.dumps(named)
            if isinstance(named, dict) and isinstance(named.get("model"), str):
                model = named["model"]
    tenant = tenant_of(request.headers, request.get(CLIENT)) or ANONYMOUS
    if model is not None:
        accounting.admit(state, tenant, model, can_downgrade=False)
    async with state.router.send(
        request.method,
        path,
        headers=request.headers,
        body=body or None,
        model=model,
        # "batch" defers only the cached endpoints; anything else goes now, at low priority
        priority=parse_priority(request.headers.get("X-Semcache-Priority"))[0],
        query=azure_paths.forwarded_query(request),
    ) as attempt:
        upstream = attempt.response
        headers = {
            name: value
            for name, value in upstream.headers.items()
            if name.lower()
            not in ("content-length", "content-encoding", "transfer-encoding", "connection")
        }
        headers["X-Semcache"] = "bypass"
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        # The end of a JSON answer (an embedding's usage comes last) is kept for the bill.
        billable = upstream.status == 200 and upstream.content_type == "application/json"
        tail = b""
        async for data in upstream.content.iter_any():
            await response.write(data)
            if billable:
                tail = (tail + data)[-_TAIL_BYTES:]
        await response.write_eof()
        state.metrics.requests.labels("other", "bypass").inc()
        accounting.account(state, attempt, model or "", _usage_in(tail), tenant, dialect=CHAT)
        return response


_TAIL_BYTES = 4096
_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


def _usage_in(tail: bytes) -> dict[str, Any] | None:
    """The last flat ``"usage": {...}`` object in the end of a JSON body, as an answer."""
    matches = list(_USAGE.finditer(tail))
    if not matches:
        return None
    found = matches[-1]
    try:
        usage = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return {"usage": usage} if isinstance(usage, dict) else None
