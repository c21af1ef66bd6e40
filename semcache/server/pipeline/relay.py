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
# An answer larger than this is passed on to its client but not stored (no model writes one:
# 128k tokens are about half a megabyte), and a streamed event larger than this is malformed.
MAX_ANSWER_BYTES = 8 * 2**20


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
            events = EventSplitter()
            x.response, delivered = await _relay_stream(
                x.request, upstream, headers, dialect, assembler, events, x.first_event
            )
            size = events.read
            x.received = assembler.result() if assembler.started else None
            complete = delivered and dialect.valid_answer(x.received)
        else:
            data = await upstream.read()
            size = len(data)
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
    if complete and dialect.finished_normally(x.received) and size <= MAX_ANSWER_BYTES:
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
    events: EventSplitter,
    on_first_event: Callable[[], None],
) -> tuple[web.StreamResponse, bool]:
    """Pass the upstream's events (split by ``events``) on as they come, feeding ``assembler``;
    also returns whether the whole stream reached the client (``on_first_event``: after each
    event passed on)."""
    response = web.StreamResponse(headers={**headers, **SSE_HEADERS})
    await response.prepare(request)
    try:
        async for data in upstream.content.iter_any():
            for event in events.feed(data):
                verdict = assembler.feed(event)
                if verdict is Event.MALFORMED:
                    logger.warning("the upstream streamed an invalid event: %.200r", event)
                    await _write_stream_error(response, dialect, malformed=True)
                    return response, False
                if verdict is Event.PASS:
                    await response.write(event + b"\n\n")
                    on_first_event()
            if events.pending > MAX_ANSWER_BYTES:
                logger.warning("the upstream streamed an event of over %d bytes", MAX_ANSWER_BYTES)
                await _write_stream_error(response, dialect, malformed=True)
                return response, False
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


class EventSplitter:
    """Server-sent events out of the bytes of a stream as they come, each without the blank
    line that ends it. Lines may end in CRLF, LF or CR (the SSE rule), also where a read ends
    between the CR and the LF; each byte is scanned once however long an event grows."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no event's end
        self._cr = False  # the last read ended in a CR: an LF opening the next belongs to it
        self.read = 0  # bytes read in all

    @property
    def pending(self) -> int:
        """Bytes of an event not yet ended."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self.read += len(data)
        if self._cr and data.startswith(b"\n"):
            data = data[1:]  # the LF of a CRLF whose CR ended the last read
        self._cr = data.endswith(b"\r")
        self._buffer += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = []
        start = 0
        while (end := self._buffer.find(b"\n\n", max(start, self._scanned))) >= 0:
            events.append(bytes(self._buffer[start:end]))
            start = end + 2
        del self._buffer[:start]
        self._scanned = max(0, len(self._buffer) - 1)
        return events


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
