"""A fake OpenAI API: a real aiohttp application on 127.0.0.1, port chosen by the OS.

It answers chat and legacy completions as JSON or as SSE streams in OpenAI's chunk format,
records every request it receives, and can be told to misbehave for the next requests:
fail with a status (429 with Retry-After, 500 …), be slow, or cut a stream in the middle.

With ``rpm_per_key`` it enforces a request limit per API key the way OpenAI does (a bucket of
``rpm`` requests refilled continuously) and answers 429 with ``Retry-After`` and
``x-ratelimit-*`` headers past it. Azure OpenAI's paths
(``/openai/deployments/{name}/chat/completions?api-version=…``, key in ``api-key``) are served
too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Behaviour:
    status: int = 200
    delay_s: float = 0.0
    cut_after_chunks: int | None = None  # close the stream after this many chunks, no [DONE]
    finish_reason: str = "stop"
    retry_after_s: int | None = None
    answer: str | None = None
    raw_body: bytes | None = None  # answer 200 with exactly these bytes (JSON or not)
    raw_events: list[bytes] | None = None  # stream exactly these SSE data payloads, then [DONE]
    body_fault: str | None = None  # "cut": half the body then close; "stall": half, then hang
    prompt_tokens: int = 12  # the usage reported
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when set


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: Any
    at: float = 0.0  # time.monotonic() on arrival
    status: int = 200  # what it was answered (429 when the key's limit refused it)

    @property
    def key(self) -> str:
        auth = self.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ") if auth else self.headers.get("api-key", "")


class KeyBuckets:
    """OpenAI-style request limits: per key, ``rpm`` requests refilled at ``rpm/60`` a second."""

    def __init__(self, rpm: float) -> None:
        self.rpm = rpm
        self._level: dict[str, float] = {}
        self._updated: dict[str, float] = {}

    def take(self, key: str, now: float) -> float:
        """0 when the request may go (and is counted), else seconds until it could."""
        level = self._level.get(key, self.rpm)
        level = min(self.rpm, level + (now - self._updated.get(key, now)) * self.rpm / 60)
        self._updated[key] = now
        if level >= 1:
            self._level[key] = level - 1
            return 0.0
        self._level[key] = level
        return (1 - level) * 60 / self.rpm

    def remaining(self, key: str) -> int:
        return int(self._level.get(key, self.rpm))


@dataclass
class FakeOpenAI:
    received: list[Received] = field(default_factory=list)
    script: list[Behaviour] = field(default_factory=list)  # consumed one per request
    default: Behaviour = field(default_factory=Behaviour)
    url: str = ""
    rpm_per_key: float | None = None
    _buckets: KeyBuckets | None = None
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def calls(self, path: str = "/v1/chat/completions") -> list[Received]:
        """Requests to ``path`` that were let through (not refused by a key's limit)."""
        return [r for r in self.received if r.path == path and r.status != 429]

    @property
    def refused(self) -> list[Received]:
        """Requests refused with 429 by a key's limit."""
        return [r for r in self.received if r.status == 429]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure)
        app.router.add_route("*", "/{tail:.*}", self._anything)
        return app

    async def _anything(self, request: web.Request) -> web.Response:
        """Any other path: recorded (so a test can see what reached the upstream), 404."""
        self.received.append(Received(request.rel_url.raw_path, CIMultiDict(request.headers), None))
        return web.json_response({"error": {"message": "no such path"}}, status=404)

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        if not request.query.get("api-version") or not request.headers.get("api-key"):
            return web.json_response({"error": {"message": "api-version and api-key"}}, status=400)
        return await self._chat(request)

    async def start(self) -> None:
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        self._closing.set()  # stalled answers end now
        if self._runner is not None:
            await self._runner.cleanup()

    def _next(self) -> Behaviour:
        return self.script.pop(0) if self.script else self.default

    async def _record(self, request: web.Request) -> Any:
        body = orjson.loads(await request.read())
        received = Received(
            request.rel_url.raw_path, CIMultiDict(request.headers), body, at=time.monotonic()
        )
        self.received.append(received)
        if self.rpm_per_key is not None:
            if self._buckets is None:
                self._buckets = KeyBuckets(self.rpm_per_key)
            wait = self._buckets.take(received.key, received.at)
            if wait > 0:
                received.status = 429
                raise web.HTTPTooManyRequests(
                    text=orjson.dumps(
                        {
                            "error": {
                                "message": "Rate limit reached for requests",
                                "type": "requests",
                                "param": None,
                                "code": "rate_limit_exceeded",
                            }
                        }
                    ).decode(),
                    content_type="application/json",
                    headers={
                        "retry-after": str(max(1, round(wait))),
                        "retry-after-ms": str(round(wait * 1000)),
                        "x-ratelimit-limit-requests": str(int(self.rpm_per_key)),
                        "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{wait:.3f}s",
                    },
                )
        return body

    async def _models(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, CIMultiDict(request.headers), None))
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "fake"}],
            }
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    async def _failure(self, behaviour: Behaviour) -> web.Response | None:
        await asyncio.sleep(behaviour.delay_s)
        if behaviour.status == 200:
            return None
        headers = {}
        if behaviour.retry_after_s is not None:
            headers["Retry-After"] = str(behaviour.retry_after_s)
        return web.json_response(
            {
                "error": {
                    "message": f"fake upstream failure {behaviour.status}",
                    "type": "rate_limit_error" if behaviour.status == 429 else "server_error",
                    "param": None,
                    "code": "fake_failure",
                }
            },
            status=behaviour.status,
            headers=headers,
        )

    async def _raw(self, request: web.Request, behaviour: Behaviour) -> web.StreamResponse | None:
        """The hostile answers: exactly the bytes or events it was told to send."""
        if behaviour.raw_events is not None:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for data in behaviour.raw_events:
                await response.write(b"data: " + data + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        if behaviour.body_fault is not None:
            body = orjson.dumps({"id": "x", "choices": [], "padding": "p" * 4000})
            response = web.StreamResponse(
                headers={"Content-Type": "application/json", "Content-Length": str(len(body))}
            )
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if behaviour.body_fault == "stall":
                await self._closing.wait()
            assert request.transport is not None
            request.transport.close()
            return response
        if behaviour.raw_body is not None:
            return web.Response(body=behaviour.raw_body, content_type="application/json")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        behaviour = self._next()
        if (failure := await self._failure(behaviour)) is not None:
            return failure
        if (raw := await self._raw(request, behaviour)) is not None:
            return raw
        last = body["messages"][-1].get("content")
        answer = behaviour.answer or f"Answer #{len(self.received)} to: {last}"
        usage: dict[str, Any] = {
            "prompt_tokens": behaviour.prompt_tokens,
            "completion_tokens": len(answer.split()),
            "total_tokens": behaviour.prompt_tokens + len(answer.split()),
        }
        if behaviour.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": behaviour.cached_tokens}
        base = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer, "refusal": None},
                            "logprobs": None,
                            "finish_reason": behaviour.finish_reason,
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk = {**base, "object": "chat.completion.chunk"}
        if include_usage:
            chunk["usage"] = None
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"content": word + " "} for word in answer.split(" ")[:-1]]
        deltas += [{"content": answer.split(" ")[-1]}]
        events = [
            {
                **chunk,
                "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}],
            }
            for d in deltas
        ]
        events.append(
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": behaviour.finish_reason,
                    }
                ],
            }
        )
        if include_usage:
            events.append({**chunk, "choices": [], "usage": usage})
        return await self._stream(request, events, behaviour)

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        behaviour = self._next()
        if (failure := await self._failure(behaviour)) is not None:
            return failure
        answer = behaviour.answer or f"Completion #{len(self.received)} of: {body['prompt']}"
        base = {
            "id": f"cmpl-fake-{next(self._ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
        }
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "text": answer,
                            "logprobs": None,
                            "finish_reason": behaviour.finish_reason,
                        }
                    ],
                    "usage": usage,
                }
            )
        events = [
            {
                **base,
                "choices": [
                    {"index": 0, "text": word + " ", "logprobs": None, "finish_reason": None}
                ],
            }
            for word in answer.split(" ")
        ]
        events.append(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "text": "",
                        "logprobs": None,
                        "finish_reason": behaviour.finish_reason,
                    }
                ],
            }
        )
        return await self._stream(request, events, behaviour)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's Responses API: one message of output text, JSON or typed events."""
        body = await self._record(request)
        behaviour = self._next()
        if (failure := await self._failure(behaviour)) is not None:
            return failure
        if (raw := await self._raw(request, behaviour)) is not None:
            return raw
        asked = body["input"] if isinstance(body["input"], str) else str(body["input"][-1])
        answer = behaviour.answer or f"Response #{len(self.received)} to: {asked}"
        n = next(self._ids)
        part = {"type": "output_text", "text": answer, "annotations": []}
        item = {"type": "message", "id": f"msg_fake_{n}", "status": "completed",
                "role": "assistant", "content": [part]}  # fmt: skip
        done = {
            "id": f"resp_fake_{n}", "object": "response", "created_at": int(time.time()),
            "status": "completed", "model": body["model"], "output": [item],
            "usage": {"input_tokens": 12, "output_tokens": len(answer.split()),
                      "total_tokens": 12 + len(answer.split())},
            "error": None, "incomplete_details": None, "tools": [], "tool_choice": "auto",
            "parallel_tool_calls": True,
        }  # fmt: skip
        if not body.get("stream"):
            return web.json_response(done)
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": {**done, "status": "in_progress",
                                                      "output": [], "usage": None}},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**item, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
            *({"type": "response.output_text.delta", **where, "delta": word + " "}
              for word in answer.split(" ")[:-1]),
            {"type": "response.output_text.delta", **where, "delta": answer.split(" ")[-1]},
            {"type": "response.output_text.done", **where, "text": answer},
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": done},
        ]  # fmt: skip
        for number, event in enumerate(events):
            event["sequence_number"] = number
        return await self._stream(request, events, behaviour, named=True, end=False)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's Messages API: one text block, JSON or typed events."""
        body = await self._record(request)
        behaviour = self._next()
        if (failure := await self._failure(behaviour)) is not None:
            return failure
        if (raw := await self._raw(request, behaviour)) is not None:
            return raw
        asked = body["messages"][-1]["content"]
        answer = behaviour.answer or f"Message #{len(self.received)} to: {asked}"
        usage = {"input_tokens": 12, "output_tokens": len(answer.split())}
        message = {
            "id": f"msg_fake_{next(self._ids)}", "type": "message", "role": "assistant",
            "model": body["model"], "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
        }  # fmt: skip
        if not body.get("stream"):
            return web.json_response(message)
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage,
                 "output_tokens": 1}}  # fmt: skip
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            *({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": word + " "}}
              for word in answer.split(" ")[:-1]),
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": answer.split(" ")[-1]}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": usage["output_tokens"]}},
            {"type": "message_stop"},
        ]  # fmt: skip
        return await self._stream(request, events, behaviour, named=True, end=False)

    async def _stream(
        self,
        request: web.Request,
        events: list[dict[str, Any]],
        behaviour: Behaviour,
        *,
        named: bool = False,
        end: bool = True,
    ) -> web.StreamResponse:
        """Send ``events`` as SSE (with ``event:`` lines when ``named``), then ``[DONE]`` when
        ``end``; ``cut_after_chunks`` drops the connection part way."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-ratelimit-remaining-requests": "99"}
        )
        await response.prepare(request)
        for n, event in enumerate(events):
            if behaviour.cut_after_chunks is not None and n >= behaviour.cut_after_chunks:
                # Drop the connection mid-stream, as a crashed or overloaded upstream does.
                assert request.transport is not None
                request.transport.close()
                return response
            head = f"event: {event['type']}\n".encode() if named else b""
            await response.write(head + b"data: " + orjson.dumps(event) + b"\n\n")
            await asyncio.sleep(0)
        if end:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _serve_forever(port: int, delay_ms: float) -> None:
    fake = FakeOpenAI(default=Behaviour(delay_s=delay_ms / 1000))
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"fake upstream on http://127.0.0.1:{port}/v1, {delay_ms} ms per answer", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    # python -m tests.fake_openai PORT DELAY_MS: a standalone fake upstream for benchmarks.
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]), float(sys.argv[2])))
