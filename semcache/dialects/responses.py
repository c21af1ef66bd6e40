"""OpenAI's Responses API: ``POST /v1/responses``.

A request's ``input`` is a string or a list of items; the text compared is the last user
message, and ``instructions``, the prior items and every field that changes the answer are the
scope. ``previous_response_id`` continues a conversation stored upstream that the cache cannot
see, and ``conversation`` names one whose items the upstream prepends to the input and which
takes the answer in, so such requests bypass the cache; so does one naming a stored
``prompt`` without its ``version`` (the latest, which may change upstream at any time).

A streamed answer is a sequence of typed events (``response.created`` …
``response.output_text.delta`` … ``response.completed``, each with an ``event:`` line); the
completed response travels in the last one.

A hit keeps the stored response's ``id``: it names a response the upstream stored for the same
tenant, so a client may still continue from it with ``previous_response_id``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from semcache.dialects.base import (
    DEFAULT_COMPLETION_ESTIMATE,
    Assembler,
    Dialect,
    Event,
    Keying,
    Parsed,
    counts,
    json_object,
    model_of,
    nested_int,
    now_s,
    optional,
    pieces,
    positive_int,
    sse,
    sse_fields,
    stream_flag,
    valid_counts,
)
from semcache.errors import InvalidRequestError
from semcache.tokens import count_text

_NOT_IN_SCOPE = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier", "background"}
    | {"safety_identifier", "prompt_cache_key"}
)
_USAGE = ("input_tokens", "output_tokens", "total_tokens")
# Output items a cached answer may hold: text (and the model's reasoning summary), not tool
# calls, whose results the cache never sees.
_STORABLE_ITEMS = frozenset({"message", "reasoning"})


class Responses(Dialect):
    name = "responses"
    path = "/v1/responses"
    api = "openai"
    object_prefix = "resp"
    turns_field = "input"

    def parse(self, body: object, keying: Keying) -> Parsed:
        """Raises:
        InvalidRequestError: ``model`` or ``input`` is missing or of the wrong type.
        """
        body = json_object(body)
        model = model_of(body)
        stream = stream_flag(body)
        raw = body.get("input")
        if isinstance(raw, str):
            items: list[Any] = [{"role": "user", "content": raw}]
        elif isinstance(raw, list) and raw:
            items = raw
        else:
            raise InvalidRequestError(
                "'input' must be a string or a non-empty array", field="input"
            )
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidRequestError(f"'input[{i}]' must be an object", field=f"input[{i}]")
        if body.get("previous_response_id") is not None:
            return Parsed(self, model, stream, True, None, "continues a stored response")
        if body.get("conversation") is not None:
            return Parsed(self, model, stream, True, None, "belongs to a stored conversation")
        stored_prompt = body.get("prompt")
        if isinstance(stored_prompt, dict) and stored_prompt.get("version") is None:
            return Parsed(self, model, stream, True, None, "names a stored prompt's latest version")
        last = items[-1]
        if last.get("role") != "user" or last.get("type", "message") != "message":
            return Parsed(self, model, stream, True, None, "the last input is not a user message")
        prompt = _input_text(last.get("content"))
        if prompt is None:
            return Parsed(self, model, stream, True, None, "the last user input has non-text parts")
        if not prompt.strip():
            return Parsed(self, model, stream, True, None, "the last user input is empty")
        context = {k: v for k, v in body.items() if k not in _NOT_IN_SCOPE and k != "input"}
        context["kind"] = "responses"
        context["prior"] = items[:-1]
        context["last_item_extra"] = {
            k: v for k, v in last.items() if k not in ("role", "content", "type")
        }
        request = keying.request(prompt, context)
        return Parsed(self, model, stream, True, request)

    def valid_answer(self, answer: object) -> bool:
        if not isinstance(answer, dict) or not valid_counts(answer.get("usage"), _USAGE):
            return False
        if not all(optional(answer.get(k), str) for k in ("id", "model", "object", "status")):
            return False
        output = answer.get("output")
        if not isinstance(output, list):
            return False
        for item in output:
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                return False
            if item["type"] == "message" and not _valid_content(item.get("content")):
                return False
        return True

    def finished_normally(self, answer: object) -> bool:
        """Completed, with text only: every output item a message of ``output_text`` parts."""
        if not isinstance(answer, dict) or answer.get("status") != "completed":
            return False
        output = answer.get("output")
        if not isinstance(output, list) or not output:
            return False
        messages = [item for item in output if item.get("type") == "message"]
        return (
            bool(messages)
            and all(item.get("type") in _STORABLE_ITEMS for item in output)
            and all(
                part.get("type") == "output_text" for item in messages for part in item["content"]
            )
        )

    def render_hit(self, stored: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
        return {**stored, "created_at": now_s(now)}

    def replay(
        self, stored: Mapping[str, Any], *, include_usage: bool, now: float | None = None
    ) -> Iterator[bytes]:
        response = self.render_hit(stored, now=now)
        sequence = iter(range(1_000_000))

        def event(event_type: str, **fields: Any) -> bytes:
            data = {"type": event_type, "sequence_number": next(sequence), **fields}
            return sse(data, event=event_type)

        started = {**response, "status": "in_progress", "output": [], "usage": None}
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        for index, item in enumerate(response.get("output") or []):
            if item.get("type") != "message":
                yield event("response.output_item.added", output_index=index, item=item)
                yield event("response.output_item.done", output_index=index, item=item)
                continue
            opened = {**item, "status": "in_progress", "content": []}
            yield event("response.output_item.added", output_index=index, item=opened)
            for position, part in enumerate(item.get("content") or []):
                where = {
                    "item_id": item.get("id"),
                    "output_index": index,
                    "content_index": position,
                }
                empty = {**part, "text": ""} if part.get("type") == "output_text" else part
                yield event("response.content_part.added", **where, part=empty)
                if part.get("type") == "output_text":
                    for piece in pieces(part.get("text") or ""):
                        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
                    yield event(
                        "response.output_text.done", **where, text=part.get("text"), logprobs=[]
                    )
                yield event("response.content_part.done", **where, part=part)
            yield event("response.output_item.done", output_index=index, item=item)
        yield event("response.completed", response=response)

    def assembler(self, *, hide_usage: bool = False) -> Assembler:
        return ResponseAssembler()

    def stream_error(self, message: str, code: str) -> bytes:
        error = {"type": "error", "code": code, "message": message, "param": None}
        return sse({**error, "sequence_number": 0}, event="error")

    def cached_prompt_tokens(self, answer: object) -> int:
        return nested_int(answer, "usage", "input_tokens_details", "cached_tokens")

    def usage(self, answer: object) -> tuple[int, int]:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        return counts(usage, "input_tokens", "output_tokens")

    def generated_texts(self, answer: object) -> list[str]:
        output = answer.get("output") if isinstance(answer, dict) else None
        texts: list[str] = []
        for item in output if isinstance(output, list) else []:
            if not isinstance(item, dict):
                continue
            for part in item.get("content") or [] if item.get("type") == "message" else []:
                if isinstance(part, dict):
                    texts += [part.get("text") or "", part.get("refusal") or ""]
            if item.get("type") == "function_call":
                texts += [item.get("name") or "", item.get("arguments") or ""]
        return [t for t in texts if isinstance(t, str) and t]

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        total = 0
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            total += count_text(instructions)
        raw = body.get("input")
        items = [{"content": raw}] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        for item in items:
            if isinstance(item, dict):
                text = _input_text(item.get("content"))
                total += 3 + (count_text(text) if text else 0)
        return total

    def completion_allowance(self, body: Mapping[str, Any]) -> int:
        return positive_int(body.get("max_output_tokens")) or DEFAULT_COMPLETION_ESTIMATE


def _input_text(content: object) -> str | None:
    """The text of an input message's content, or None when it has parts other than text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "text"):
            return None
        text = part.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


def _valid_content(content: object) -> bool:
    if not isinstance(content, list):
        return False
    return all(
        isinstance(part, dict)
        and isinstance(part.get("type"), str)
        and optional(part.get("text"), str)
        and (part.get("type") != "output_text" or isinstance(part.get("text"), str))
        for part in content
    )


class ResponseAssembler(Assembler):
    """The completed response of a stream is in its last event; the deltas are kept for the
    bill of a stream cut before it."""

    def __init__(self) -> None:
        super().__init__()
        self.final: dict[str, Any] | None = None
        self.text: list[str] = []
        self.meta: dict[str, Any] = {}

    @property
    def started(self) -> bool:
        return bool(self.text) or self.final is not None

    def feed(self, event: bytes) -> Event:
        _, data = sse_fields(event)
        if not data:
            return Event.PASS
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.malformed = True
            return Event.MALFORMED
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            self.malformed = True
            return Event.MALFORMED
        event_type = payload["type"]
        if event_type == "response.output_text.delta":
            if not isinstance(payload.get("delta"), str):
                self.malformed = True
                return Event.MALFORMED
            self.text.append(payload["delta"])
        elif event_type == "response.created" and isinstance(payload.get("response"), dict):
            self.meta = payload["response"]
        elif event_type in ("response.completed", "response.incomplete", "response.failed"):
            final = payload.get("response")
            if not Responses().valid_answer(final):
                self.malformed = True
                return Event.MALFORMED
            self.final = final
            self.done = True
        return Event.PASS

    def result(self) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        return {
            **self.meta,
            "status": "incomplete",
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "".join(self.text)}],
                }
            ],
        }
