"""Stage ``relay``: the upstream's answer goes to the client as it arrives, and is kept for
the bill and the store. A JSON answer that is not a valid response of the API is a 502; a
stream that ends early, or brings an event that is not one of the API's, ends with the API's
error event. The upstream connection is released at the end of this stage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from semcache.dialects import Assembler, Dialect, Event, Parsed
from semcache.errors import InvalidAnswerError
from semcache.server.pipeline.exchange import Exchange
from semcache.server.upstream_headers import passed_headers

logger = logging.getLogger("semcache.server")

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def relay(x: Exchange) -> web.StreamResponse | None:
    """Raises:
    InvalidAnswerError: the upstream answered 200 with a body that is not a valid response.
    """
    if x.attempt is None:  # answered by a merged call
        return None
    upstream = x.attempt.response
    headers = {**passed_headers(x.attempt), **x.headers}
    dialect = x.dialect
    try:
        if upstream.status == 200 and upstream.content_type == "text/event-stream":
            assembler = dialect.assembler(hide_usage=x.hide_usage)
            x.response, delivered = await _relay_stream(
                x.request, upstream, headers, dialect, assembler, x.first_event
            )
            x.received = assembler.result() if assembler.started else None
            complete = delivered and dialect.valid_answer(x.received)
        else:
            data = await upstream.read()
            x.response = web.Response(
                body=data,
                status=upstream.status,
                content_type=upstream.content_type,
                headers=headers,
            )
            x.received = _json_answer(upstream.status, data)
            if upstream.status == 200 and not dialect.valid_answer(x.received):
                x.received = None
                raise InvalidAnswerError(
                    f"the upstream answered {x.request.path} with a body that is not a "
                    f"valid response"
                )
            complete = x.received is not None
    finally:
        await x.upstream.aclose()  # the connection and its key are free before bill and store
    if complete and dialect.finished_normally(x.received):
        x.answer = x.received
    return None


async def serve_stored(
    request: web.Request,
    parsed: Parsed,
    stored: dict[str, Any],
    headers: dict[str, str],
    on_first_event: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """A stored answer to the client: rendered fresh as JSON, or replayed as the API's stream
    (``on_first_event`` is called once its first event is written)."""
    dialect = parsed.dialect
    if not parsed.stream:
        return web.json_response(dialect.render_hit(stored), headers=headers, dumps=json_text)
    response = web.StreamResponse(headers={**headers, **SSE_HEADERS})
    await response.prepare(request)
    for event in dialect.replay(stored, include_usage=parsed.include_usage):
        await response.write(event)
        if on_first_event is not None:
            on_first_event()
            on_first_event = None
    await response.write_eof()
    return response


def json_text(value: Any) -> str:
    """A JSON response body by orjson (``web.json_response(..., dumps=json_text)``)."""
    return orjson.dumps(value).decode()


def _json_answer(status: int, data: bytes) -> dict[str, Any] | None:
    if status != 200:
        return None
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    dialect: Dialect,
    assembler: Assembler,
    on_first_event: Callable[[], None],
) -> tuple[web.StreamResponse, bool]:
    """Pass the upstream's events on as they come, feeding ``assembler``; also returns whether
    the whole stream reached the client (``on_first_event``: after each event passed on)."""
    response = web.StreamResponse(headers={**headers, **SSE_HEADERS})
    await response.prepare(request)
    buffer = b""
    try:
        async for data in upstream.content.iter_any():
            buffer += data.replace(b"\r\n", b"\n")
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                verdict = assembler.feed(event)
                if verdict is Event.MALFORMED:
                    logger.warning("the upstream streamed an invalid event: %.200r", event)
                    await _write_stream_error(response, dialect, malformed=True)
                    return response, False
                if verdict is Event.PASS:
                    await response.write(event + b"\n\n")
                    on_first_event()
    except ConnectionResetError:
        logger.info("client left before the end of the stream; not storing it")
        return response, False
    except (TimeoutError, aiohttp.ClientError) as exc:
        logger.warning("upstream stream broke off: %s", exc)
    if not assembler.done:
        # The status line and part of the answer are already with the client: what is left is
        # to say so in the stream, as an error event that the API's SDKs raise.
        await _write_stream_error(response, dialect)
        return response, False
    await response.write_eof()
    return response, True


async def _write_stream_error(
    response: web.StreamResponse, dialect: Dialect, *, malformed: bool = False
) -> None:
    message = (
        "the upstream streamed something that is not a valid event"
        if malformed
        else "the upstream stream ended before the end of the answer"
    )
    code = "invalid_upstream_answer" if malformed else "stream_interrupted"
    try:
        await response.write(dialect.stream_error(message, code))
        await response.write_eof()
    except ConnectionResetError:
        pass
