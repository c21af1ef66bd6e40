"""Stage ``parse``: the body as JSON, the controls in the headers, the tenant, and the
dialect's reading of the body (the cache request, or why it bypasses the cache)."""

from __future__ import annotations

import codecs
import dataclasses

import orjson
from aiohttp import web

from semcache.dialects import Keying
from semcache.errors import InvalidRequestError
from semcache.server import azure_paths
from semcache.server.controls import (
    ANONYMOUS,
    Controls,
    parse_compression,
    parse_priority,
    tenant_namespace,
    tenant_of,
)
from semcache.server.pipeline.exchange import Exchange
from semcache.server.state import CLIENT


async def parse(x: Exchange) -> web.StreamResponse | None:
    """Raises:
    InvalidRequestError: the body is not JSON, a header control or a field is invalid.
    """
    try:
        # A byte-order mark is no part of the JSON (RFC 8259 lets a parser skip it), but some
        # clients write one: Windows PowerShell's UTF-8, .NET's Encoding.UTF8.
        body = orjson.loads((await x.request.read()).removeprefix(codecs.BOM_UTF8))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    body = azure_paths.with_model_in_path(x.request, x.state.router.upstreams, body)
    headers = x.request.headers
    x.controls = Controls.from_headers(headers)
    x.priority, x.deferred = parse_priority(headers.get("X-Semcache-Priority"))
    x.compression = parse_compression(
        headers.get("X-Semcache-Compression"), x.state.config.compression
    )
    tenant = tenant_of(headers, x.request.get(CLIENT))
    if tenant is None and x.state.config.anonymous_cache:
        tenant = ANONYMOUS
    parsed = x.dialect.parse(
        body,
        Keying(
            namespace=tenant_namespace(tenant or ANONYMOUS, x.controls.namespace),
            min_similarity=x.controls.min_similarity,
            ttl_s=x.controls.ttl_s,
            min_confidence=x.controls.min_confidence,
        ),
    )
    if tenant is None and parsed.request is not None:
        # Callers without credentials cannot be told apart: sharing their entries would give
        # one caller's answers to another.
        parsed = dataclasses.replace(
            parsed, request=None, bypass="no credentials (set anonymous_cache to share a cache)"
        )
    x.tenant = tenant or ANONYMOUS  # budgets still count what anonymous callers spend
    x.body = x.outgoing = body
    x.parsed = parsed
    x.asked = parsed.request
    x.storable = parsed.request is not None and not x.controls.no_store
    if parsed.request is None:
        x.outcome = "bypass"
        x.headers = {"X-Semcache": "bypass", "X-Semcache-Reason": parsed.bypass or "not cacheable"}
    else:
        x.headers = {"X-Semcache-Namespace": parsed.request.namespace}
    return None
