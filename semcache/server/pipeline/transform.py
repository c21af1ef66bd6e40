"""Stage ``transform``: the rewrites of a request before it is looked up and sent, in order.

Most rewrites change only ``outgoing``, what the upstream receives, while the cache keys on
``body``: asking a stream for its usage here, compressing a long history in :mod:`.compress`
(after the lookup: a hit never pays for it). A spent budget's
downgrade is the one rewrite that changes the key too, on purpose: the answer of the cheaper
model is stored (and so looked up) under the cheaper model, never served later to a request
for the model asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web

from semcache.dialects import Keying
from semcache.server import accounting
from semcache.server.pipeline.exchange import Exchange


def downgrade(x: Exchange) -> None:
    """A spent budget that downgrades sends the request to its cheaper model, keyed, looked up,
    stored and billed as that model's. (A budget that refuses does so in :mod:`.admit`, for a
    miss only: hits cost nothing and are always served.)"""
    assert x.parsed is not None
    cheaper = accounting.cheaper_model(x.state, x.tenant, x.parsed.model)
    if cheaper is None:
        return
    x.body = {**x.body, "model": cheaper}
    x.outgoing = {**x.outgoing, "model": cheaper}
    request = x.parsed.request
    if request is None:
        x.parsed = dataclasses.replace(x.parsed, model=cheaper)
    else:
        x.parsed = x.dialect.parse(x.body, Keying.of(request))
    x.headers["X-Semcache-Budget"] = f"downgraded to {cheaper}"


def ask_for_usage(x: Exchange) -> None:
    """A stream must report its usage for the answer to be billed and stored with its token
    counts; when the client did not ask for it, the relay keeps it from the client."""
    assert x.parsed is not None
    if x.parsed.stream:
        x.outgoing, x.hide_usage = x.dialect.with_usage_in_stream(x.outgoing)


REWRITES: tuple[Callable[[Exchange], None], ...] = (downgrade, ask_for_usage)


async def transform(x: Exchange) -> web.StreamResponse | None:
    for rewrite in REWRITES:
        rewrite(x)
    return None
