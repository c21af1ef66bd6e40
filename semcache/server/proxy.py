"""The cached endpoints: look up, serve a hit, or forward a miss and store its answer.

A request takes one of three paths, named in the ``X-Semcache`` response header:

- ``hit``: answered from the cache, as JSON or replayed as a stream;
- ``miss``: forwarded upstream; the answer reaches the client as it arrives and is stored once
  complete (status 200, every choice finished with ``stop`` or ``length``, a stream that reached
  ``[DONE]``, a client that stayed to the end);
- ``bypass``: not safely cacheable (a tool result last, non-text parts) or the cache failed;
  forwarded untouched, nothing stored.

Identical concurrent misses share one upstream call (:mod:`semcache.coalescing`); lookups of
concurrent requests share one embedding batch (:mod:`semcache.batching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from semcache.cache import Decision
from semcache.dialects import CHAT, Assembler, Dialect, Event, Parsed
from semcache.errors import InvalidAnswerError, InvalidRequestError
from semcache.keys import CacheRequest
from semcache.policy import Reason
from semcache.server import accounting
from semcache.server.controls import ANONYMOUS, Controls, tenant_namespace, tenant_of
from semcache.server.state import CLIENT, STATE, State
from semcache.tokens import count_text
from semcache.upstream.router import Attempt, parse_priority

logger = logging.getLogger("semcache.server")

# Upstream response headers worth passing on (rate limits, request ids, processing time).
_PASSED_PREFIXES = ("x-ratelimit-", "openai-", "x-request-id", "retry-after", "azureml-", "apim-")


@dataclass
class Outcome:
    label: str  # hit | miss | bypass
    headers: dict[str, str]


def cached_endpoint(dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one cached API shape."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        started = time.perf_counter()
        outcome = "error"
        try:
            response, outcome = await _handle(request, state, dialect)
            return response
        finally:
            state.metrics.requests.labels(request.path, outcome).inc()
            state.metrics.latency.labels(request.path, outcome).observe(
                time.perf_counter() - started
            )

    return endpoint


async def _handle(
    request: web.Request, state: State, dialect: Dialect
) -> tuple[web.StreamResponse, str]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    controls = Controls.from_headers(request.headers)
    tenant = tenant_of(request.headers, request.get(CLIENT))
    if tenant is None and state.config.anonymous_cache:
        tenant = ANONYMOUS
    namespace = tenant_namespace(tenant or ANONYMOUS, controls.namespace)
    priority = parse_priority(request.headers.get("X-Semcache-Priority"))
    parse = functools.partial(
        dialect.parse,
        namespace=namespace,
        min_similarity=controls.min_similarity,
        ttl_s=controls.ttl_s,
        min_confidence=controls.min_confidence,
    )
    parsed = parse(body)
    budget_note: dict[str, str] = {}
    cheaper = accounting.cheaper_model(state, tenant or ANONYMOUS, parsed.model)
    asked = parsed.request  # an answer stored for the model asked for is served too: it is free
    if cheaper is not None and parsed.request is not None:
        # Looked up, stored and billed as the cheaper model's request: where it will be stored.
        body = {**body, "model": cheaper}
        parsed = parse(body)
        budget_note = {"X-Semcache-Budget": f"downgraded to {cheaper}"}
    if tenant is None and parsed.request is not None:
        # Callers without credentials cannot be told apart: sharing their entries would give
        # one caller's answers to another.
        parsed = dataclasses.replace(
            parsed, request=None, bypass="no credentials (set anonymous_cache to share a cache)"
        )
    tenant = tenant or ANONYMOUS  # budgets still count what anonymous callers spend
    send = functools.partial(_forward, request, state, priority=priority, tenant=tenant)
    if parsed.request is None:
        headers = {"X-Semcache": "bypass", "X-Semcache-Reason": parsed.bypass or "not cacheable"}
        response, _ = await send(
            *_budgeted(state, tenant, parse, parsed, body, headers), store=False
        )
        return response, "bypass"

    decision: Decision | None = None
    if not controls.no_cache:
        try:
            if asked is not None and asked is not parsed.request:
                decision = await _lookup(state, asked)
                if decision.hit is None:
                    decision = await _lookup(state, parsed.request)
            else:
                decision = await _lookup(state, parsed.request)
        except Exception:
            logger.exception("cache lookup failed; forwarding upstream")
            state.metrics.cache_errors.labels("lookup").inc()
            headers = {"X-Semcache": "bypass", "X-Semcache-Reason": "cache error"}
            response, _ = await send(
                *_budgeted(state, tenant, parse, parsed, body, headers), store=False
            )
            return response, "bypass"

    if decision is not None and decision.hit is not None:
        stored = decision.hit.response
        if dialect.valid_answer(stored):
            headers = {
                "X-Semcache": "hit",
                "X-Semcache-Namespace": parsed.request.namespace,
                "X-Semcache-Score": f"{decision.hit.score:.4f}",
                "X-Semcache-Entry": str(decision.hit.entry_id),
                "X-Semcache-Reason": decision.reason.value,
                **_confidence_header(decision),
                **budget_note,
            }
            _count_savings(state, parsed, stored)
            state.shadow.maybe_check(
                dialect, request.headers, body, stored, decision.hit.entry_id, tenant
            )
            return await _serve_stored(request, parsed, stored, headers), "hit"
        logger.error("entry %d does not hold an API answer; ignoring it", decision.hit.entry_id)
        state.metrics.cache_errors.labels("lookup").inc()

    degraded = await _degraded_hit(state, parsed, decision)
    if (
        degraded is not None
        and degraded.hit is not None
        and dialect.valid_answer(degraded.hit.response)
    ):
        headers = {
            "X-Semcache": "hit",
            "X-Semcache-Namespace": parsed.request.namespace,
            "X-Semcache-Degraded": "true",
            "X-Semcache-Score": f"{degraded.hit.score:.4f}",
            "X-Semcache-Entry": str(degraded.hit.entry_id),
            "X-Semcache-Reason": "degraded",
            **_confidence_header(degraded),
            **budget_note,
        }
        _count_savings(state, parsed, degraded.hit.response)
        return await _serve_stored(request, parsed, degraded.hit.response, headers), "hit"

    headers = {
        "X-Semcache": "miss",
        "X-Semcache-Namespace": parsed.request.namespace,
        **budget_note,
    }
    if decision is not None:
        headers["X-Semcache-Reason"] = decision.reason.value
        if decision.score is not None:
            headers["X-Semcache-Score"] = f"{decision.score:.4f}"
        headers.update(_confidence_header(decision))
    elif controls.no_cache:
        headers["X-Semcache-Reason"] = "no-cache"

    parsed, body, headers = _budgeted(state, tenant, parse, parsed, body, headers)
    assert parsed.request is not None
    key = parsed.request.exact_key
    store = not controls.no_store
    leading = None if controls.no_cache else state.coalescer.join(key)
    if leading is not None:
        shared = await asyncio.shield(leading)
        if shared is not None:
            state.metrics.coalesced.inc()
            _count_savings(state, parsed, shared)
            headers["X-Semcache-Coalesced"] = "true"
            return await _serve_stored(request, parsed, shared, headers), "miss"
        response, _ = await send(parsed, body, headers, store=store)
        return response, "miss"
    result = None
    try:
        response, result = await send(parsed, body, headers, store=store)
    finally:
        if not controls.no_cache:
            state.coalescer.finish(key, result)
    return response, "miss"


async def _lookup(state: State, request: CacheRequest) -> Decision:
    # The exact tier first, on its own threads: an exact hit never waits for the embedding
    # batch that a semantic lookup joins.
    decision = await state.cache.alookup_exact(request)
    if decision is None:
        decision = await state.batcher.lookup(request)
    return decision


def _budgeted(
    state: State,
    tenant: str,
    parse: Callable[[dict[str, Any]], Parsed],
    parsed: Parsed,
    body: dict[str, Any],
    headers: dict[str, str],
) -> tuple[Parsed, dict[str, Any], dict[str, str]]:
    """The request as the budgets allow it: unchanged, or sent to the cheaper model (and then
    keyed, stored and billed as that model's).

    Raises:
        BudgetExceededError: a cap is reached and the budget refuses.
    """
    model = accounting.admit(state, tenant, parsed.model)
    if model is None:
        return parsed, body, headers
    body = {**body, "model": model}
    return parse(body), body, {**headers, "X-Semcache-Budget": f"downgraded to {model}"}


async def _degraded_hit(state: State, parsed: Parsed, decision: Decision | None) -> Decision | None:
    """Under backlog, a second look at a lower similarity (and confidence), when configured."""
    config = state.config
    if (
        config.degraded_min_similarity is None
        or decision is None
        or parsed.request is None
        or decision.reason not in _DEGRADABLE
        or not state.router.backlogged(parsed.model)
    ):
        return None
    relaxed = dataclasses.replace(
        parsed.request,
        min_similarity=config.degraded_min_similarity,
        min_confidence=config.degraded_min_confidence,
    )
    try:
        return await state.cache.alookup(relaxed)
    except Exception:
        logger.exception("degraded lookup failed; forwarding upstream")
        state.metrics.cache_errors.labels("lookup").inc()
        return None


# Misses a lower threshold could turn into hits (not guards, which stay in force).
_DEGRADABLE = frozenset({Reason.BELOW_THRESHOLD, Reason.UNVERIFIED})


def _confidence_header(decision: Decision) -> dict[str, str]:
    if decision.confidence is None:
        return {}
    return {"X-Semcache-Confidence": f"{decision.confidence:.4f}"}


def _count_savings(state: State, parsed: Parsed, stored: dict[str, Any]) -> None:
    prompt_tokens, completion_tokens = parsed.dialect.usage(stored)
    state.metrics.tokens_saved.labels("prompt").inc(prompt_tokens)
    state.metrics.tokens_saved.labels("completion").inc(completion_tokens)
    state.metrics.cost_saved.inc(state.prices.cost(parsed.model, prompt_tokens, completion_tokens))


async def _serve_stored(
    request: web.Request, parsed: Parsed, stored: dict[str, Any], headers: dict[str, str]
) -> web.StreamResponse:
    dialect = parsed.dialect
    if not parsed.stream:
        return web.json_response(dialect.render_hit(stored), headers=headers, dumps=_dumps)
    response = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
    await response.prepare(request)
    for event in dialect.replay(stored, include_usage=parsed.include_usage):
        await response.write(event)
    await response.write_eof()
    return response


_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _forward(
    request: web.Request,
    state: State,
    parsed: Parsed,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    store: bool,
    priority: int,
    tenant: str,
) -> tuple[web.StreamResponse, dict[str, Any] | None]:
    """Send the request upstream through the router and relay the answer; returns the
    response and the complete answer when it finished normally (stored if ``store``), else
    None."""
    dialect = parsed.dialect
    hide_usage = False
    if parsed.stream:
        body, hide_usage = dialect.with_usage_in_stream(body)
    payload = orjson.dumps(body)
    held: Attempt | None = None
    received: dict[str, Any] | None = None  # what the upstream answered, complete or not
    answer: dict[str, Any] | None = None  # the same, when it is complete and valid
    try:
        async with state.router.send(
            "POST",
            request.rel_url.raw_path,
            headers=request.headers,
            body=payload,
            model=parsed.model,
            tokens=dialect.request_tokens(body),
            priority=priority,
            api=dialect.api,
            query=request.rel_url.raw_query_string,
            buffered=True,
        ) as attempt:
            held = attempt
            upstream = attempt.response
            passed = {**_passed_headers(attempt), **headers}
            assembler = dialect.assembler(hide_usage=hide_usage)
            if upstream.status == 200 and upstream.content_type == "text/event-stream":
                response, delivered = await _relay_stream(
                    request, upstream, passed, dialect, assembler
                )
                received = assembler.result() if assembler.started else None
                complete = delivered and dialect.valid_answer(received)
                answer = received if complete and dialect.finished_normally(received) else None
            else:
                data = await upstream.read()
                response = web.Response(
                    body=data,
                    status=upstream.status,
                    content_type=upstream.content_type,
                    headers=passed,
                )
                received = _json_answer(upstream.status, data)
                if upstream.status == 200 and not dialect.valid_answer(received):
                    received = None
                    raise InvalidAnswerError(
                        f"the upstream answered {request.path} with a body that is not a "
                        f"valid response"
                    )
                answer = received if dialect.finished_normally(received) else None
    finally:
        # The upstream connection and its key are free again before the bill and the store.
        if held is not None:
            accounting.account(
                state, held, parsed.model, received, tenant, dialect=dialect,
                estimate=_estimate(body, dialect, received),
            )  # fmt: skip
    if parsed.request is None:
        return response, None
    if answer is not None and store:
        await _store(state, parsed, answer)
    return response, answer


def _json_answer(status: int, data: bytes) -> dict[str, Any] | None:
    if status != 200:
        return None
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _estimate(
    body: dict[str, Any], dialect: Dialect, received: dict[str, Any] | None
) -> tuple[int, int] | None:
    """What an answer without usage (a stream cut short, by either side) cost: the prompt and
    the text that came, by the tokenizer."""
    if received is None or sum(dialect.usage(received)) > 0:
        return None
    return (
        dialect.prompt_tokens(body),
        sum(count_text(t) for t in dialect.generated_texts(received)),
    )


def _passed_headers(attempt: Attempt) -> dict[str, str]:
    """Upstream headers worth passing on; rate-limit headers only when they describe the
    caller's own key, not one of the pool's."""
    own_key = attempt.target.key is None
    passed = {
        name: value
        for name, value in attempt.response.headers.items()
        if name.lower().startswith(_PASSED_PREFIXES)
        and (own_key or not name.lower().startswith(("x-ratelimit-", "retry-after")))
    }
    passed["X-Semcache-Upstream"] = attempt.target.upstream.name
    if attempt.retries:
        passed["X-Semcache-Retries"] = str(attempt.retries)
    return passed


async def _relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    dialect: Dialect,
    assembler: Assembler,
) -> tuple[web.StreamResponse, bool]:
    """Pass the upstream's events on as they come, feeding ``assembler``; a stream that ends
    before the API's end of stream, or brings an event that is not one of the API's, gets an
    error event. Also returns whether the whole stream reached the client."""
    response = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
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


async def _store(state: State, parsed: Parsed, answer: dict[str, Any]) -> None:
    assert parsed.request is not None
    try:
        await state.cache.astore(parsed.request, answer)
    except Exception:
        logger.exception("storing an answer failed; the client got it anyway")
        state.metrics.cache_errors.labels("store").inc()


async def forward_verbatim(request: web.Request) -> web.StreamResponse:
    """Any other ``/v1/*`` path: relayed as it is through the router, streaming in both
    directions."""
    state = request.app[STATE]
    body = await request.read()
    model = None
    if body:
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
                model = parsed["model"]
    tenant = tenant_of(request.headers, request.get(CLIENT)) or ANONYMOUS
    if model is not None:
        accounting.admit(state, tenant, model, can_downgrade=False)
    async with state.router.send(
        request.method,
        request.rel_url.raw_path,
        headers=request.headers,
        body=body or None,
        model=model,
        priority=parse_priority(request.headers.get("X-Semcache-Priority")),
        query=request.rel_url.raw_query_string,
    ) as attempt:
        upstream = attempt.response
        headers = {
            name: value
            for name, value in upstream.headers.items()
            if name.lower()
            not in ("content-length", "content-encoding", "transfer-encoding", "connection")
        }
        headers["X-Semcache"] = "bypass"
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        # The end of a JSON answer (an embedding's usage comes last) is kept for the bill.
        billable = upstream.status == 200 and upstream.content_type == "application/json"
        tail = b""
        async for data in upstream.content.iter_any():
            await response.write(data)
            if billable:
                tail = (tail + data)[-_TAIL_BYTES:]
        await response.write_eof()
        state.metrics.requests.labels("other", "bypass").inc()
        accounting.account(state, attempt, model or "", _usage_in(tail), tenant, dialect=CHAT)
        return response


_TAIL_BYTES = 4096
_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


def _usage_in(tail: bytes) -> dict[str, Any] | None:
    """The last flat ``"usage": {...}`` object in the end of a JSON body, as an answer."""
    matches = list(_USAGE.finditer(tail))
    if not matches:
        return None
    found = matches[-1]
    try:
        usage = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return {"usage": usage} if isinstance(usage, dict) else None
