"""Stage ``transform``: the rewrites of the outgoing body, in order. The cache keys on
``body``; only ``outgoing`` changes here. Later optimisations (compression, batching) are
transforms too."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from semcache.server.pipeline.exchange import Exchange


def ask_for_usage(x: Exchange) -> None:
    """A stream must report its usage for the answer to be billed and stored with its token
    counts; when the client did not ask for it, the relay keeps it from the client."""
    assert x.parsed is not None
    if x.parsed.stream:
        x.outgoing, x.hide_usage = x.dialect.with_usage_in_stream(x.outgoing)


REWRITES: tuple[Callable[[Exchange], None], ...] = (ask_for_usage,)


async def transform(x: Exchange) -> web.StreamResponse | None:
    for rewrite in REWRITES:
        rewrite(x)
    return None
