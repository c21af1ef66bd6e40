"""Anthropic's Messages API: ``POST /v1/messages``.

The text compared is the last user message; ``system``, the prior turns and every field that
changes the answer are the scope. The caller's key is ``x-api-key`` (its tenant, as any other
credential); ``anthropic-version`` passes through. A streamed answer is ``message_start``,
``content_block_start``/``_delta``/``_stop`` per block, ``message_delta`` (the stop reason and
the output tokens) and ``message_stop``, each with an ``event:`` line.
"""

from __future__ import annotations

import contextlib
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
    chat_history,
    json_object,
    messages_of,
    model_of,
    nested_int,
    optional,
    optional_int,
    pieces,
    positive_int,
    sse,
    sse_fields,
    stream_flag,
)
from semcache.tokens import count_text

_NOT_IN_SCOPE = frozenset({"stream", "metadata", "service_tier"})
_STORABLE_STOP = frozenset({"end_turn", "max_tokens", "stop_sequence"})
_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class Messages(Dialect):
    name = "messages"
    path = "/v1/messages"
    api = "anthropic"
    object_prefix = "msg"
    turns_field = "messages"

    def parse(self, body: object, keying: Keying) -> Parsed:
        """Raises:
        InvalidRequestError: ``model`` or ``messages`` is missing or of the wrong type.
        """
        body = json_object(body)
        model = model_of(body)
        stream = stream_flag(body)
        messages = messages_of(body)
        last = messages[-1]
        if last["role"] != "user":
            return Parsed(self, model, stream, True, None, "the last message is not the user's")
        prompt = message_text(last.get("content"))
        if prompt is None:
            return Parsed(
                self, model, stream, True, None, "the last user message has non-text parts"
            )
        if not prompt.strip():
            return Parsed(self, model, stream, True, None, "the last user message is empty")
        context = {k: v for k, v in body.items() if k not in _NOT_IN_SCOPE and k != "messages"}
        context["kind"] = "messages"
        context["prior"] = messages[:-1]
        context["last_message_extra"] = {
            k: v for k, v in last.items() if k not in ("role", "content")
        }
        request = keying.request(prompt, context)
        return Parsed(self, model, stream, True, request)

    def valid_answer(self, answer: object) -> bool:
        if not isinstance(answer, dict):
            return False
        usage = answer.get("usage")
        if usage is not None and not (
            isinstance(usage, dict) and all(optional_int(usage.get(n)) for n in _USAGE)
        ):
            return False
        if not all(
            optional(answer.get(k), str)
            for k in ("id", "type", "role", "model", "stop_reason", "stop_sequence")
        ):
            return False
        content = answer.get("content")
        if not isinstance(content, list):
            return False
        return all(
            isinstance(block, dict)
            and isinstance(block.get("type"), str)
            and (block["type"] != "text" or isinstance(block.get("text"), str))
            for block in content
        )

    def finished_normally(self, answer: object) -> bool:
        """Ended by the model or a limit (not a tool call), with text blocks only."""
        if not isinstance(answer, dict) or answer.get("stop_reason") not in _STORABLE_STOP:
            return False
        content = answer.get("content")
        return (
            isinstance(content, list)
            and bool(content)
            and all(block.get("type") == "text" for block in content)
        )

    def render_hit(self, stored: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
        return {**stored, "id": self.new_id()}

    def replay(
        self, stored: Mapping[str, Any], *, include_usage: bool, now: float | None = None
    ) -> Iterator[bytes]:
        message = self.render_hit(stored, now=now)
        usage = message.get("usage") or {}
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        yield sse({"type": "message_start", "message": start}, event="message_start")
        for index, block in enumerate(message.get("content") or []):
            opened = {**block, "text": ""} if block.get("type") == "text" else block
            yield sse(
                {"type": "content_block_start", "index": index, "content_block": opened},
                event="content_block_start",
            )
            for piece in pieces(block.get("text") or "") if block.get("type") == "text" else []:
                text = {"type": "text_delta", "text": piece}
                yield sse(
                    {"type": "content_block_delta", "index": index, "delta": text},
                    event="content_block_delta",
                )
            yield sse({"type": "content_block_stop", "index": index}, event="content_block_stop")
        ending: dict[str, Any] = {
            "type": "message_delta",
            "delta": {
                "stop_reason": message.get("stop_reason"),
                "stop_sequence": message.get("stop_sequence"),
            },
            "usage": {"output_tokens": usage.get("output_tokens", 0)},
        }
        yield sse(ending, event="message_delta")
        yield sse({"type": "message_stop"}, event="message_stop")

    def assembler(self, *, hide_usage: bool = False) -> Assembler:
        return MessageAssembler()

    def stream_error(self, message: str, code: str) -> bytes:
        return sse({"type": "error", "error": {"type": "api_error", "message": message}}, "error")

    note_role = "user"  # the Messages API has no system messages in the list

    def history(self, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        return chat_history(body)

    def summary_request(
        self, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> tuple[str, dict[str, Any]]:
        system = [m["content"] for m in messages if m["role"] == "system"]
        rest = [m for m in messages if m["role"] != "system"]
        body = {"model": model, "max_tokens": max_tokens, "messages": rest}
        if system:
            body["system"] = "\n\n".join(system)
        return self.path, body

    def cached_prompt_tokens(self, answer: object) -> int:
        return nested_int(answer, "usage", "cache_read_input_tokens")

    def usage(self, answer: object) -> tuple[int, int]:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if not isinstance(usage, dict):
            return 0, 0
        values = {n: usage.get(n) for n in _USAGE}
        ints = {
            n: v if isinstance(v, int) and not isinstance(v, bool) else 0 for n, v in values.items()
        }
        prompt = (
            ints["input_tokens"]
            + ints["cache_creation_input_tokens"]
            + ints["cache_read_input_tokens"]
        )
        return prompt, ints["output_tokens"]

    def generated_texts(self, answer: object) -> list[str]:
        content = answer.get("content") if isinstance(answer, dict) else None
        texts: list[str] = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            texts.append(block.get("text") or "")
            if block.get("type") == "tool_use":
                texts += [block.get("name") or "", orjson.dumps(block.get("input")).decode()]
        return [t for t in texts if isinstance(t, str) and t]

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        total = 0
        system = body.get("system")
        system_text = message_text(system) if isinstance(system, list | str) else None
        if system_text:
            total += count_text(system_text)
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, dict):
                text = message_text(message.get("content"))
                total += 3 + (count_text(text) if text else 0)
        return total

    def completion_allowance(self, body: Mapping[str, Any]) -> int:
        return positive_int(body.get("max_tokens")) or DEFAULT_COMPLETION_ESTIMATE

    def request_tokens(self, body: Mapping[str, Any]) -> int:
        return self.prompt_tokens(body) + self.completion_allowance(body)


def message_text(content: object) -> str | None:
    """The text of a message's content (a string or text blocks), or None when it has other
    blocks (images, documents, tool results)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text":
            return None
        text = block.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


class MessageAssembler(Assembler):
    def __init__(self) -> None:
        super().__init__()
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.json: dict[int, str] = {}

    @property
    def started(self) -> bool:
        return self.message is not None

    def feed(self, event: bytes) -> Event:
        _, data = sse_fields(event)
        if not data:
            return Event.PASS
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._malformed()
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            return self._malformed()
        event_type = payload["type"]
        if event_type == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                return self._malformed()
            self.message = dict(message)
        elif event_type == "content_block_start":
            block, index = payload.get("content_block"), payload.get("index")
            if not isinstance(block, dict) or not isinstance(index, int) or not _index(index):
                return self._malformed()
            self.blocks[index] = dict(block)
        elif event_type == "content_block_delta":
            delta, index = payload.get("delta"), payload.get("index")
            if (
                not isinstance(delta, dict)
                or not isinstance(index, int)
                or index not in self.blocks
            ):
                return self._malformed()
            if delta.get("type") == "text_delta":
                if not isinstance(delta.get("text"), str):
                    return self._malformed()
                block = self.blocks[index]
                block["text"] = (block.get("text") or "") + delta["text"]
            elif delta.get("type") == "input_json_delta":
                self.json[index] = self.json.get(index, "") + str(delta.get("partial_json") or "")
        elif event_type == "message_delta":
            delta, usage = payload.get("delta"), payload.get("usage")
            if not isinstance(delta, dict) or self.message is None:
                return self._malformed()
            for key in ("stop_reason", "stop_sequence"):
                if key in delta:
                    self.message[key] = delta[key]
            if isinstance(usage, dict):
                self.message["usage"] = {**(self.message.get("usage") or {}), **usage}
        elif event_type == "message_stop":
            self.done = self.message is not None
        return Event.PASS

    def _malformed(self) -> Event:
        self.malformed = True
        return Event.MALFORMED

    def result(self) -> dict[str, Any]:
        message = dict(self.message or {"type": "message", "role": "assistant"})
        for index, partial in self.json.items():
            with contextlib.suppress(orjson.JSONDecodeError, KeyError):
                self.blocks[index]["input"] = orjson.loads(partial)
        message["content"] = [self.blocks[i] for i in sorted(self.blocks)]
        return message


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1024
