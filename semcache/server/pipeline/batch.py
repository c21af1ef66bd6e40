"""Stage ``batch``: a miss that may share a call waits in a batching window with others of its
group and is answered by one merged call (see :mod:`semcache.server.request_batching`). An
item the merged call did not answer exactly, or a window that closed on one request, goes on
to :mod:`.send` alone. Opt-in: ``X-Semcache-Batch: allow``, or the ``batch_models`` /
``batch_namespaces`` settings (``X-Semcache-Batch: deny`` opts a request out).

Members of one call share the path, the model, the system prompt and every other field of the
body; the tenant, unless ``batch_across_tenants`` and the pool's keys are used; and the
caller's credentials and account headers whenever they would be forwarded."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from semcache.batching import PROTOCOLS, Cause, Member, Protocol
from semcache.server import azure_paths
from semcache.server.controls import CREDENTIAL_HEADERS
from semcache.server.pipeline.exchange import Exchange
from semcache.server.pipeline.relay import json_text
from semcache.server.request_batching import Fallback, Waiting
from semcache.upstream.router import PRIORITIES

# Headers that change what the upstream does with a request (betas, versions, accounts).
_BEHAVIOUR_PREFIXES = ("openai-", "anthropic-")


async def batch(x: Exchange) -> web.StreamResponse | None:
    if x.response is not None or x.parsed is None or not _asked(x):
        return None
    protocol = PROTOCOLS.get(x.dialect.name)
    joined = "api" if protocol is None else _member(x, protocol)
    if isinstance(joined, str):
        x.headers["X-Semcache-Batch"] = f"single; reason={joined}"
        return None
    waiting = Waiting(
        member=joined,
        dialect=x.dialect,
        path=x.dialect.path,
        headers=x.request.headers,
        model=x.parsed.model,
        tenant=x.tenant,
        priority=x.priority,
        prompt_tokens=x.dialect.prompt_tokens(x.outgoing),
        request=x.cache_request if x.storable else None,
    )
    outcome = await x.state.batching.windows.join(_group(x, joined), waiting)
    if isinstance(outcome, Fallback):
        x.headers["X-Semcache-Batch"] = (
            f"single; reason={outcome.reason}"
            if outcome.batch is None
            else f"{outcome.batch}; fallback={(outcome.cause or Cause.MALFORMED).value}"
        )
        return None
    answer = outcome.answer
    x.headers["X-Semcache-Batch"] = outcome.batch
    x.received = x.answer = answer
    if outcome.stored:
        x.storable = False  # stored already, with the rest of its batch
    x.response = web.json_response(
        answer, headers={**outcome.headers, **x.headers}, dumps=json_text
    )
    return None


def _asked(x: Exchange) -> bool:
    if x.controls.batch is not None:
        return x.controls.batch
    config = x.state.config
    models = config.batched_models()
    assert x.parsed is not None
    return (
        "*" in models
        or x.parsed.model in models
        or (
            x.controls.namespace is not None and x.controls.namespace in config.batched_namespaces()
        )
    )


def _member(x: Exchange, protocol: Protocol) -> Member | str:
    """The member this request makes, or why it goes alone."""
    if x.priority == PRIORITIES["high"]:
        return "priority"
    return protocol.member(x.outgoing)


def _group(x: Exchange, joined: Member) -> str:
    state = x.state
    assert x.parsed is not None
    pooled = state.router.pooled(x.parsed.model, x.dialect.api)
    headers = x.request.headers
    parts: dict[str, Any] = {
        "path": x.dialect.path,
        "query": azure_paths.forwarded_query(x.request),
        "api": x.dialect.name,
        "body": joined.group,
        "headers": sorted(
            (name.lower(), value)
            for name, value in headers.items()
            if name.lower().startswith(_BEHAVIOUR_PREFIXES)
        ),
    }
    if not (pooled and state.config.batch_across_tenants):
        parts["tenant"] = x.tenant
    if not pooled:  # the first member's credentials go upstream for all
        parts["credentials"] = sorted(
            (name, value) for name in CREDENTIAL_HEADERS for value in headers.getall(name, [])
        )
    return orjson.dumps(parts, option=orjson.OPT_SORT_KEYS).decode()
