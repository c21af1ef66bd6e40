"""The status page, for users without Grafana.

GET /dashboard        one self-contained page (its script and styles inline, nothing fetched
                      from the internet) that charts the last hour and refreshes itself
GET /dashboard/data   what the page shows, as JSON: the hour's points and totals
                      (:mod:`.status_history`), the upstreams and keys (headroom, breaker,
                      rotation, health), the queue, the budgets and the cache's size

With ``admin_token`` set, both need it: as ``Authorization: Bearer <token>``, or as the
password of HTTP Basic authentication, which a browser asks for by itself.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from importlib import resources

from aiohttp import web

from semcache.server.error_responses import error_response
from semcache.server.state import STATE

_PAGE = resources.files("semcache.server").joinpath("status_page.html").read_bytes()


def _allowed(request: web.Request) -> bool:
    token = request.app[STATE].config.admin_token
    if token is None:
        return True
    given = request.headers.get("Authorization", "")
    if given.startswith("Basic "):
        try:
            decoded = base64.b64decode(given[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        given = "Bearer " + decoded.partition(":")[2]
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _challenge() -> web.Response:
    response = error_response(401, "the status page needs the admin token (as the password)")
    response.headers["WWW-Authenticate"] = 'Basic realm="semcache", charset="UTF-8"'
    return response


async def page(request: web.Request) -> web.Response:
    if not _allowed(request):
        return _challenge()
    return web.Response(
        body=_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={
            # Everything the page needs is inline; it may only call back to this sidecar.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            "Cache-Control": "no-store",
        },
    )


async def data(request: web.Request) -> web.Response:
    if not _allowed(request):
        return _challenge()
    state = request.app[STATE]
    return web.json_response(
        {
            **state.status.describe(),
            "keys": state.router.describe(),
            "health": None if state.health is None else state.health.describe(),
            "queue_length": state.router.queue_length,
            "budgets": None if state.ledger is None else state.ledger.describe(),
            "entries": len(state.cache),
        },
        headers={"Cache-Control": "no-store"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/data", data)
