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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from semcache.tokens import count_messages, count_text


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
    raw_stream: list[bytes] | None = None  # stream exactly these bytes, each piece on its own
    body_fault: str | None = None  # "cut": half the body then close; "stall": half, then hang
    prompt_tokens: int = 12  # the usage reported (0: the prompt counted with the tokenizer)
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when set
    # How a merged call (semcache's batch schema) is answered wrongly: one of BATCH_FAULTS.
    batch_fault: str | None = None


# Ways of answering a merged call wrongly; each must send the affected items again alone.
BATCH_FAULTS = (
    "shuffle",  # the entries in reverse order
    "drop",  # the last entry missing
    "duplicate",  # the first entry twice
    "extra",  # an entry with an id that was not asked
    "swap",  # the first two entries' ids exchanged (answers under each other's ids)
    "truncate",  # cut by max_tokens: finish_reason length, the JSON unfinished
    "malformed",  # not JSON at all
    "wrong_shape",  # JSON, but not the schema's shape
    "refuse",  # a refusal instead of content
    "empty",  # an empty answer for the first item
)


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
    # Picks each merged call's fault (None: answer it well), over the Behaviour's own.
    batch_faults: Callable[[], str | None] | None = None
    # The Batch API: files by id, jobs by id; a job finishes at its ``polls_to_finish``-th
    # look, ending as ``job_outcome`` ("completed", "expired", "failed") with ``job_fault``
    # ("error_line": the first request fails, "missing_line": the last has no result).
    files: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls_to_finish: int = 1
    down: bool = False  # answer every request with 503, health checks included
    job_outcome: str = "completed"
    job_fault: str | None = None
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

    @web.middleware
    async def _unless_down(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.down:
            self.received.append(
                Received(request.path, CIMultiDict(request.headers), None, status=503)
            )
            return web.json_response({"error": {"message": "down"}}, status=503)
        return await handler(request)

    def app(self) -> web.Application:
        # The providers take bodies of tens of megabytes (images and documents in base64).
        app = web.Application(middlewares=[self._unless_down], client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._azure)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_job)
        app.router.add_get("/v1/batches/{id}", self._job)
        app.router.add_route("*", "/{tail:.*}", self._anything)
        return app

    # -- the Batch API ---------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, CIMultiDict(request.headers), None))
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return web.json_response({"error": {"message": "purpose and file"}}, status=400)
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = upload.file.read()
        return web.json_response(
            {"id": file_id, "object": "file", "purpose": "batch", "bytes": len(self.files[file_id])}
        )

    async def _file_content(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, CIMultiDict(request.headers), None))
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _create_job(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if body.get("input_file_id") not in self.files or body.get("completion_window") != "24h":
            return web.json_response({"error": {"message": "bad batch"}}, status=400)
        job_id = f"batch_{next(self._ids)}"
        self.jobs[job_id] = {
            "id": job_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "metadata": body.get("metadata"),
            "polls": 0,
            "key": request.headers.get("Authorization", ""),
        }
        return web.json_response(self.jobs[job_id])

    async def _job(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, CIMultiDict(request.headers), None))
        job = self.jobs.get(request.match_info["id"])
        if job is None or job["key"] != request.headers.get("Authorization", ""):
            return web.json_response({"error": {"message": "no such batch"}}, status=404)
        job["polls"] += 1
        if job["status"] not in ("completed", "expired", "failed"):
            job["status"] = "in_progress"
            if job["polls"] >= self.polls_to_finish:
                self._finish_job(job)
        return web.json_response({k: v for k, v in job.items() if k not in ("polls", "key")})

    def _finish_job(self, job: dict[str, Any]) -> None:
        lines = [orjson.loads(line) for line in self.files[job["input_file_id"]].splitlines()]
        output, errors = [], []
        for i, line in enumerate(lines):
            if self.job_fault == "missing_line" and i == len(lines) - 1:
                continue
            if self.job_outcome != "completed" and i % 2 == 1:
                continue  # unanswered when the job expired or failed
            if self.job_fault == "error_line" and i == 0:
                error = {"message": "fake server error", "type": "server_error"}
                errors.append(
                    {
                        "id": f"req_{i}",
                        "custom_id": line["custom_id"],
                        "response": {"status_code": 500, "body": {"error": error}},
                        "error": None,
                    }
                )
                continue
            body = line["body"]
            text = answer_to(body["messages"][-1]["content"])
            prompt = count_messages(body["messages"])
            answer = {
                "id": f"chatcmpl-fake-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(text.split()),
                    "total_tokens": prompt + len(text.split()),
                },
            }
            output.append(
                {
                    "id": f"req_{i}",
                    "custom_id": line["custom_id"],
                    "response": {"status_code": 200, "body": answer},
                    "error": None,
                }
            )
        for name, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = b"".join(orjson.dumps(r) + b"\n" for r in rows)
                job[name] = file_id
        job["status"] = self.job_outcome

    async def _anything(self, request: web.Request) -> web.Response:
        """Any other path: recorded (so a test can see what reached the upstream), 404."""
        self.received.append(Received(request.rel_url.raw_path, CIMultiDict(request.headers), None))
        return web.json_response({"error": {"message": "no such path"}}, status=404)

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        if not request.query.get("api-version") or not request.headers.get("api-key"):
            return web.json_response({"error": {"message": "api-version and api-key"}}, status=400)
        if request.path.endswith("/embeddings"):
            return await self._embeddings(request)
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
        if behaviour.raw_stream is not None:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for piece in behaviour.raw_stream:
                await response.write(piece)
                await asyncio.sleep(0.01)  # so that the sidecar reads it as a piece of its own
            await response.write_eof()
            return response
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
        finish_reason = behaviour.finish_reason
        refusal = None
        merged = _merged_items(body)
        if merged is not None:
            fault = behaviour.batch_fault
            if self.batch_faults is not None:
                fault = self.batch_faults()
            answer, finish_reason, refusal = _merged_answer(merged, fault)
        counted = behaviour.prompt_tokens == 0  # usage by the tokenizer
        prompt = count_messages(body["messages"]) if counted else behaviour.prompt_tokens
        completion = count_text(answer) if counted else len(answer.split())
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
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
                            "message": {
                                "role": "assistant",
                                "content": None if refusal else answer,
                                "refusal": refusal,
                            },
                            "logprobs": None,
                            "finish_reason": finish_reason,
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
        if not all("content" in m for m in body["messages"]):
            # As Anthropic answers a message without content: a 400, never a crash (a 500
            # would count against the upstream in the sidecar's breaker).
            error = {"type": "invalid_request_error", "message": "messages: content required"}
            return web.json_response({"type": "error", "error": error}, status=400)
        asked = body["messages"][-1]["content"]
        answer = behaviour.answer or f"Message #{len(self.received)} to: {asked}"
        usage = {"input_tokens": 12, "output_tokens": len(answer.split())}
        content: list[dict[str, Any]] = [{"type": "text", "text": answer}]
        stop_reason = "end_turn"
        if (body.get("tool_choice") or {}).get("name") == "semcache_batch":
            fault = behaviour.batch_fault
            if self.batch_faults is not None:
                fault = self.batch_faults()
            items = orjson.loads(asked)["items"]
            content, stop_reason = _merged_message(items, fault)
            usage["output_tokens"] = 20 * len(items)
        message = {
            "id": f"msg_fake_{next(self._ids)}", "type": "message", "role": "assistant",
            "model": body["model"], "content": content,
            "stop_reason": stop_reason, "stop_sequence": None, "usage": usage,
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


def answer_to(text: str) -> str:
    """What the fake answers an item of a merged call: derived from the item alone, so a test
    can tell whose answer a client got."""
    return f"Answer to: {text}"


def _merged_items(body: dict[str, Any]) -> list[dict[str, str]] | None:
    """The items of a merged call (semcache's batch schema), ``None`` for any other call."""
    schema = (body.get("response_format") or {}).get("json_schema") or {}
    if schema.get("name") != "semcache_batch":
        return None
    items: list[dict[str, str]] = orjson.loads(body["messages"][-1]["content"])["items"]
    return items


def merged_entries(items: list[dict[str, str]], fault: str | None) -> dict[str, Any]:
    """The structured answer to a merged call's items, with ``fault``'s damage to its
    entries (the faults that damage the whole answer are the caller's to apply)."""
    entries: list[dict[str, str]] = [
        {
            "id": item["id"],
            "input_end": " ".join(item["input"].split()[-5:]),
            "answer": answer_to(item["input"]),
        }
        for item in items
    ]
    if fault == "shuffle":
        entries.reverse()
    elif fault == "drop":
        entries.pop()
    elif fault == "duplicate":
        entries.append(dict(entries[0]))
    elif fault == "extra":
        entries.append({"id": "not-asked", "input_end": "x", "answer": "x"})
    elif fault == "swap" and len(entries) > 1:
        entries[0]["id"], entries[1]["id"] = entries[1]["id"], entries[0]["id"]
    elif fault == "empty":
        entries[0]["answer"] = ""
    if fault == "wrong_shape":
        return {"answers": {e["id"]: e["answer"] for e in entries}}
    return {"answers": entries}


def _merged_answer(items: list[dict[str, str]], fault: str | None) -> tuple[str, str, str | None]:
    """The content, finish reason and refusal of a merged chat call's answer."""
    content = orjson.dumps(merged_entries(items, fault)).decode()
    if fault == "truncate":
        return content[: len(content) // 2], "length", None
    if fault == "malformed":
        return "Here are the answers: " + content[:-1], "stop", None
    if fault == "refuse":
        return "", "stop", "I can't help with that."
    return content, "stop", None


def _merged_message(
    items: list[dict[str, str]], fault: str | None
) -> tuple[list[dict[str, Any]], str]:
    """The content blocks and stop reason of a merged Messages call's answer (a forced tool
    call whose input is the answers)."""
    answers = merged_entries(items, fault)
    call = {"type": "tool_use", "id": "toolu_fake", "name": "semcache_batch", "input": answers}
    if fault == "truncate":
        return [call], "max_tokens"
    if fault == "malformed":
        return [{"type": "text", "text": "Here are the answers: " + str(answers)}], "end_turn"
    if fault == "refuse":
        return [{"type": "text", "text": "I can't help with that."}], "refusal"
    return [call], "tool_use"


async def _serve_forever(
    port: int, delay_ms: float, *, count_tokens: bool = False, batch_fault_rate: float = 0.0
) -> None:
    fake = FakeOpenAI(
        default=Behaviour(delay_s=delay_ms / 1000, prompt_tokens=0 if count_tokens else 12)
    )
    if batch_fault_rate > 0:
        import random

        rng = random.Random(3)
        fake.batch_faults = lambda: (
            rng.choice(BATCH_FAULTS) if rng.random() < batch_fault_rate else None
        )
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"fake upstream on http://127.0.0.1:{port}/v1, {delay_ms} ms per answer", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    # python -m tests.fake_openai PORT DELAY_MS [--count-tokens] [--batch-fault-rate R]:
    # a standalone fake upstream for benchmarks.
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("delay_ms", type=float)
    parser.add_argument("--count-tokens", action="store_true", help="usage by the tokenizer")
    parser.add_argument("--batch-fault-rate", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(
        _serve_forever(
            args.port,
            args.delay_ms,
            count_tokens=args.count_tokens,
            batch_fault_rate=args.batch_fault_rate,
        )
    )
