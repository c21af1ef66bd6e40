"""Stage ``defer``: a miss marked ``X-Semcache-Priority: batch`` is kept for the next provider
batch job and answered ``202`` with the URL of its job (see
:mod:`semcache.server.batch_jobs`); hits never get this far, they are served at once."""

from __future__ import annotations

from aiohttp import web

from semcache.batching.jobs import ENDPOINTS
from semcache.errors import InvalidRequestError
from semcache.server.batch_jobs import Deferred
from semcache.server.controls import tenant_of
from semcache.server.pipeline.exchange import Exchange
from semcache.server.pipeline.relay import json_text
from semcache.server.state import CLIENT

_FIELD = "X-Semcache-Priority"


async def defer(x: Exchange) -> web.StreamResponse | None:
    """Raises:
    InvalidRequestError: the request cannot go in a batch job (a stream, an endpoint the
        provider's batch jobs do not serve, no pool key, no credentials).
    """
    if not x.deferred:
        return None
    assert x.parsed is not None
    state = x.state
    path = x.dialect.path
    if path not in ENDPOINTS:
        raise InvalidRequestError(
            f"{_FIELD}: batch is served for {', '.join(ENDPOINTS)}, not {path}", field=_FIELD
        )
    if x.parsed.stream:
        raise InvalidRequestError(f"{_FIELD}: batch cannot stream its answer", field=_FIELD)
    model = x.outgoing.get("model")
    if not isinstance(model, str) or not state.router.pooled(model, x.dialect.api):
        raise InvalidRequestError(
            f"{_FIELD}: batch needs [[upstreams]] with api_keys: a job is polled long after "
            "the request, and callers' keys are never written down",
            field=_FIELD,
        )
    if tenant_of(x.request.headers, x.request.get(CLIENT)) is None and not (
        state.config.anonymous_cache
    ):
        raise InvalidRequestError(
            f"{_FIELD}: batch needs credentials, to give the answer to its caller only",
            field=_FIELD,
        )
    record = state.batch_jobs.defer(
        Deferred(
            path=path,
            model=model,
            body=x.outgoing,
            tenant=x.tenant,
            request=x.cache_request if x.storable else None,
        )
    )
    x.outcome = "deferred"
    headers = {**x.headers, "Location": record["url"], "X-Semcache-Job": record["id"]}
    return web.json_response(record, status=202, headers=headers, dumps=json_text)
