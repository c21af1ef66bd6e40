"""Stage ``admit``: whether a miss may go upstream at all. A spent budget that refuses stops it
here with a 429 (hits never get this far: they cost nothing and are always served)."""

from __future__ import annotations

from aiohttp import web

from semcache.server import accounting
from semcache.server.pipeline.exchange import Exchange


async def admit(x: Exchange) -> web.StreamResponse | None:
    """Raises:
    BudgetExceededError: a cap is reached and the budget refuses.
    """
    assert x.parsed is not None
    accounting.admit(x.state, x.tenant, x.parsed.model, can_downgrade=False)
    return None
