"""The admin API, behind ``Authorization: Bearer <admin_token>``; off when no token is set.

GET    /admin/entries/{id}          one entry (prompt, namespace, times, hits)
DELETE /admin/entries/{id}          delete it
POST   /admin/entries/{id}/wrong    mark it wrong: never served again, kept for audit
DELETE /admin/namespaces/{name}     flush every entry of a namespace
"""

from __future__ import annotations

import hmac

from aiohttp import web

from semcache.server.errors import error_response
from semcache.server.state import STATE


def _refused(request: web.Request) -> web.Response | None:
    token = request.app[STATE].config.admin_token
    if token is None:
        return error_response(404, "the admin API is off: set admin_token to turn it on")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return error_response(401, "the admin API needs Authorization: Bearer <admin_token>")
    return None


def _entry_id(request: web.Request) -> int:
    try:
        return int(request.match_info["entry_id"])
    except ValueError:
        raise web.HTTPBadRequest(text="entry id must be an integer") from None


async def get_entry(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    entry = await request.app[STATE].cache.aentry(_entry_id(request))
    if entry is None:
        return error_response(404, "no such entry")
    return web.json_response(
        {
            "id": entry.entry_id,
            "prompt": entry.prompt,
            "namespace": entry.namespace,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "hits": entry.hits,
            "response": entry.response,
        }
    )


async def delete_entry(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    deleted = await request.app[STATE].cache.adelete(_entry_id(request))
    return web.json_response({"deleted": deleted}, status=200 if deleted else 404)


async def mark_wrong(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    marked = await request.app[STATE].cache.amark_wrong(_entry_id(request))
    return web.json_response({"marked_wrong": marked}, status=200 if marked else 404)


async def flush_namespace(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    removed = await request.app[STATE].cache.aclear(request.match_info["namespace"])
    return web.json_response({"removed": removed})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/entries/{entry_id}", get_entry)
    app.router.add_delete("/admin/entries/{entry_id}", delete_entry)
    app.router.add_post("/admin/entries/{entry_id}/wrong", mark_wrong)
    app.router.add_delete("/admin/namespaces/{namespace}", flush_namespace)
