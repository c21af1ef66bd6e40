"""Reading request bodies: bounded in size, in time and in how many are read at once.

A client that declares a body and then sends it slowly (or never) would otherwise hold a handler,
its memory and its socket for as long as it likes. Every body is read here, before any handler
runs: a declared length over ``max_body_bytes`` is refused at once (413), a body not received
within ``body_read_timeout_s`` is refused with 408, and at most ``max_pending_bodies`` large
bodies (over ``SMALL_BODY_BYTES``, or of undeclared length) are read at the same time (one waits
its turn within the same time limit, then gets 503). Small bodies, which is almost every chat
request, never wait for a turn: clients stalling large bodies cannot hold them up. Handlers then
read the body that aiohttp keeps.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from semcache.server.error_responses import error_response

logger = logging.getLogger("semcache.server")

SMALL_BODY_BYTES = 64 * 1024


def body_middleware(*, max_bytes: int, timeout_s: float, max_pending: int) -> Middleware:
    reading = asyncio.Semaphore(max_pending)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        declared = request.content_length
        if declared is not None and declared > max_bytes:
            refused = error_response(
                413,
                f"the request body of {declared} bytes is larger than the sidecar's limit of "
                f"{max_bytes} bytes (setting max_body_bytes)",
                code="request_too_large",
            )
            refused.force_close()  # rather than read the body it declared to the end
            return refused
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        large = declared is None or declared > SMALL_BODY_BYTES
        if large:
            try:
                async with asyncio.timeout_at(deadline):
                    await reading.acquire()
            except TimeoutError:
                return error_response(
                    503,
                    f"the sidecar is reading {max_pending} large request bodies already; try again",
                    code="busy",
                    headers={"Retry-After": "1"},
                )
        try:
            async with asyncio.timeout_at(deadline):
                await request.read()
        except TimeoutError:
            logger.info("a request body was not received within %g s", timeout_s)
            response = error_response(
                408,
                f"the request body was not received within {timeout_s:g} s "
                f"(setting body_read_timeout_s)",
                code="request_timeout",
            )
            response.force_close()
            return response
        finally:
            if large:
                reading.release()
        return await handler(request)

    return middleware
