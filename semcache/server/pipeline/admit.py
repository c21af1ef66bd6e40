"""Stage ``admit``: what the budgets allow. A spent budget that downgrades sends the request
to its cheaper model, and the request is then keyed, looked up, stored and billed as that
model's (the cache is searched where the answer will be stored); a budget that refuses does so
only for a miss, in :mod:`.send` (hits cost nothing and are always served)."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from semcache.dialects import Keying
from semcache.server import accounting
from semcache.server.pipeline.exchange import Exchange


async def admit(x: Exchange) -> web.StreamResponse | None:
    assert x.parsed is not None
    cheaper = accounting.cheaper_model(x.state, x.tenant, x.parsed.model)
    if cheaper is None:
        return None
    x.body = x.outgoing = {**x.body, "model": cheaper}
    request = x.parsed.request
    if request is None:
        x.parsed = dataclasses.replace(x.parsed, model=cheaper)
    else:
        keying = Keying(
            request.namespace, request.min_similarity, request.ttl_s, request.min_confidence
        )
        x.parsed = x.dialect.parse(x.body, keying)
    x.headers["X-Semcache-Budget"] = f"downgraded to {cheaper}"
    return None
