"""The admin API, behind ``Authorization: Bearer <admin_token>``; off when no token is set.

GET    /admin/entries               a page of entries: ?namespace=&marked_wrong=true&after=&limit=
GET    /admin/entries/{id}          one entry (prompt, namespace, times, hits, marked_wrong), also
                                    one marked wrong
DELETE /admin/entries/{id}          delete it
POST   /admin/entries/{id}/wrong    mark it wrong: never served again, kept for audit
GET    /admin/namespaces            every namespace with its number of entries
DELETE /admin/namespaces/{name}     flush every entry of a namespace

A caller's namespace is in the ``X-Semcache-Namespace`` header of each cached answer.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from semcache.entries import Entry
from semcache.errors import InvalidRequestError
from semcache.server.error_responses import error_response
from semcache.server.state import STATE

MAX_PAGE = 500


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


def _describe(entry: Entry, *, marked_wrong: bool) -> dict[str, object]:
    return {
        "id": entry.entry_id,
        "prompt": entry.prompt,
        "namespace": entry.namespace,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "hits": entry.hits,
        "marked_wrong": marked_wrong,
        "response": entry.response,
    }


async def _settled(request: web.Request) -> None:
    """Wait for the answers served but not yet stored: the admin sees every entry a client
    was answered with, and a flush or a delete is not undone by a store that lands after it."""
    await request.app[STATE].after_response.drain()


async def get_entry(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    await _settled(request)
    cache = request.app[STATE].cache
    entry_id = _entry_id(request)
    entry = await cache.aentry(entry_id)
    if entry is not None:
        return web.json_response(_describe(entry, marked_wrong=False))
    wrong = await cache.amarked_wrong(entry_id)
    if wrong is not None:
        return web.json_response(_describe(wrong, marked_wrong=True))
    return error_response(404, "no such entry")


async def list_entries(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    await _settled(request)
    query = request.query
    marked_wrong = query.get("marked_wrong", "false").lower()
    if marked_wrong not in ("true", "false"):
        raise InvalidRequestError("marked_wrong must be true or false", field="marked_wrong")
    after = _integer(query.get("after", "0"), "after", 0)
    limit = _integer(query.get("limit", "50"), "limit", 1, MAX_PAGE)
    page = await request.app[STATE].cache.aentries(
        namespace=query.get("namespace"),
        marked_wrong=marked_wrong == "true",
        after=after,
        limit=limit + 1,
    )
    shown = page[:limit]
    return web.json_response(
        {
            "data": [_describe(e, marked_wrong=marked_wrong == "true") for e in shown],
            "has_more": len(page) > limit,
            "next_after": shown[-1].entry_id if shown else None,
        }
    )


async def list_namespaces(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    await _settled(request)
    counts = await request.app[STATE].cache.anamespaces()
    return web.json_response(
        {"data": [{"namespace": name, "entries": n} for name, n in counts.items()]}
    )


def _integer(raw: str, name: str, low: int, high: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer", field=name) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRequestError(f"{name} must be {bound}", field=name)
    return value


async def delete_entry(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    await _settled(request)
    deleted = await request.app[STATE].cache.adelete(_entry_id(request))
    return web.json_response({"deleted": deleted}, status=200 if deleted else 404)


async def mark_wrong(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    await _settled(request)
    marked = await request.app[STATE].cache.amark_wrong(_entry_id(request))
    return web.json_response({"marked_wrong": marked}, status=200 if marked else 404)


async def flush_namespace(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    await _settled(request)
    removed = await request.app[STATE].cache.aclear(request.match_info["namespace"])
    return web.json_response({"removed": removed})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/entries", list_entries)
    app.router.add_get("/admin/namespaces", list_namespaces)
    app.router.add_get("/admin/entries/{entry_id}", get_entry)
    app.router.add_delete("/admin/entries/{entry_id}", delete_entry)
    app.router.add_post("/admin/entries/{entry_id}/wrong", mark_wrong)
    app.router.add_delete("/admin/namespaces/{namespace}", flush_namespace)
