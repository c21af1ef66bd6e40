"""OpenAI's choices-based APIs: ``/v1/chat/completions`` and the legacy ``/v1/completions``.

Both answer with ``choices`` and stream ``data: {chunk}`` events ended by ``data: [DONE]``; the
usage arrives in a last chunk only when ``stream_options.include_usage`` asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from semcache.dialects.base import (
    Assembler,
    Dialect,
    Event,
    Keying,
    Parsed,
    chat_history,
    counts,
    json_object,
    messages_of,
    model_of,
    nested_int,
    now_s,
    optional,
    optional_int,
    pieces,
    sse,
    sse_fields,
    stream_flag,
    valid_counts,
)
from semcache.errors import InvalidRequestError
from semcache.tokens import count_messages, count_text

# Fields that do not change the answer: everything else in a body goes into the scope, so a
# field OpenAI adds tomorrow separates entries rather than mixing them.
_NOT_IN_SCOPE = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})
_STORABLE_FINISH = frozenset({"stop", "length"})
_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


class _Choices(Dialect):
    """What chat and legacy completions share."""

    api = "openai"
    chunk_object: str
    response_object: str

    def valid_answer(self, answer: object) -> bool:
        """Whether ``answer`` has the shape of a complete answer, every field a client reads of
        the right type: only such answers are stored, and only such entries are served."""
        if not isinstance(answer, dict) or not valid_counts(answer.get("usage"), _USAGE):
            return False
        if not all(
            optional(answer.get(key), str)
            for key in ("id", "model", "object", "system_fingerprint", "service_tier")
        ):
            return False
        if not optional_int(answer.get("created")):
            return False
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            return False
        return all(
            isinstance(choice, dict)
            and optional(choice.get("finish_reason"), str)
            and optional_int(choice.get("index"))
            and self._valid_choice(choice)
            for choice in choices
        )

    def _valid_choice(self, choice: dict[str, Any]) -> bool:
        raise NotImplementedError

    def valid_chunk(self, chunk: object) -> bool:
        """Whether one streamed event has the shape of a chunk of this API."""
        if not isinstance(chunk, dict) or not valid_counts(chunk.get("usage"), _USAGE):
            return False
        choices = chunk.get("choices")
        if choices is None:
            return True
        if not isinstance(choices, list):
            return False
        return all(
            isinstance(choice, dict)
            and optional_int(choice.get("index"))
            and optional(choice.get("finish_reason"), str)
            and self._valid_delta_choice(choice)
            for choice in choices
        )

    def _valid_delta_choice(self, choice: dict[str, Any]) -> bool:
        raise NotImplementedError

    def finished_normally(self, answer: object) -> bool:
        """Every choice ended with ``stop`` or ``length`` (not a tool call, a content filter or
        a cut)."""
        if not isinstance(answer, dict):
            return False
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            return False
        return all(
            isinstance(choice, dict) and choice.get("finish_reason") in _STORABLE_FINISH
            for choice in choices
        )

    def cached_prompt_tokens(self, answer: object) -> int:
        return nested_int(answer, "usage", "prompt_tokens_details", "cached_tokens")

    def usage(self, answer: object) -> tuple[int, int]:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        return counts(usage, "prompt_tokens", "completion_tokens")

    def render_hit(self, stored: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
        """A stored answer as a fresh response: new ``id`` and ``created``, the rest as stored."""
        response = dict(stored)
        response["id"] = self.new_id()
        response["created"] = now_s(now)
        return response

    def replay(
        self, stored: Mapping[str, Any], *, include_usage: bool, now: float | None = None
    ) -> Iterator[bytes]:
        response = self.render_hit(stored, now=now)
        base = {
            "id": response["id"],
            "object": self.chunk_object,
            "created": response["created"],
            "model": response.get("model", ""),
        }
        if "system_fingerprint" in response:
            base["system_fingerprint"] = response["system_fingerprint"]
        for choice in response.get("choices", []):
            for chunk in self._choice_chunks(base, choice.get("index", 0), choice):
                yield sse(chunk)
        if include_usage and "usage" in response:
            yield sse({**base, "choices": [], "usage": response["usage"]})
        yield b"data: [DONE]\n\n"

    def _choice_chunks(
        self, base: dict[str, Any], index: int, choice: Mapping[str, Any]
    ) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def with_usage_in_stream(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        options = body.get("stream_options") or {}
        if not body.get("stream") or options.get("include_usage"):
            return body, False
        # Ask for the usage chunk so the answer is stored and billed with its token counts;
        # the client did not ask for it, so it is not relayed.
        return {**body, "stream_options": {**options, "include_usage": True}}, True

    def assembler(self, *, hide_usage: bool = False) -> Assembler:
        return ChunkAssembler(self, hide_usage=hide_usage)


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = stream_flag(body)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object", field="stream_options")
    return stream, bool(options.get("include_usage", False))


def text_of(content: object) -> str | None:
    """The text of a chat message's content, or None when it has parts other than text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "\n".join(texts)
    return None


class ChatCompletions(_Choices):
    """``POST /v1/chat/completions``. The text compared is the last user message; the scope
    covers the model, every other field that changes the answer (system prompt, tools,
    sampling parameters, response format …) and the prior turns, verbatim. A request that
    searches the web (``web_search_options``) bypasses the cache, as one with the Responses
    API's web search does (its answer, holding a search call, is never stored)."""

    name = "chat"
    path = "/v1/chat/completions"
    object_prefix = "chatcmpl"
    turns_field = "messages"
    chunk_object = "chat.completion.chunk"
    response_object = "chat.completion"

    def parse(self, body: object, keying: Keying) -> Parsed:
        """Raises:
        InvalidRequestError: a required field is missing or of the wrong type (``field``
            names it).
        """
        body = json_object(body)
        model = model_of(body)
        messages = messages_of(body)
        stream, include_usage = _stream_flags(body)
        last = messages[-1]
        bypass = None
        prompt = None
        if last["role"] != "user":
            bypass = f"the last message is from {last['role']!r}, not the user"
        elif body.get("web_search_options") is not None:
            bypass = "it searches the web: what it finds is of the moment"
        else:
            prompt = text_of(last.get("content"))
            if prompt is None:
                bypass = "the last user message has non-text parts"
            elif not prompt.strip():
                bypass = "the last user message is empty"
        if prompt is None or bypass is not None:
            return Parsed(self, model, stream, include_usage, None, bypass)
        context = {k: v for k, v in body.items() if k not in _NOT_IN_SCOPE and k != "messages"}
        context["kind"] = "chat"
        context["prior"] = messages[:-1]
        context["last_message_extra"] = {
            k: v for k, v in last.items() if k not in ("role", "content")
        }
        request = keying.request(prompt, context)
        return Parsed(self, model, stream, include_usage, request)

    def _valid_choice(self, choice: dict[str, Any]) -> bool:
        return _valid_message(choice.get("message"))

    def _valid_delta_choice(self, choice: dict[str, Any]) -> bool:
        delta = choice.get("delta")
        return delta is None or _valid_delta(delta)

    def generated_texts(self, answer: object) -> list[str]:
        """Per choice its content, refusal and tool calls (name and arguments)."""
        choices = answer.get("choices") if isinstance(answer, dict) else None
        texts: list[str] = []
        for choice in choices if isinstance(choices, list) else []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            texts += [message.get("content") or "", message.get("refusal") or ""]
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    texts += [function.get("name") or "", function.get("arguments") or ""]
        return [t for t in texts if isinstance(t, str) and t]

    note_role = "system"

    def history(self, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        return chat_history(body)

    def summary_request(
        self, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> tuple[str, dict[str, Any]]:
        return self.path, {"model": model, "messages": messages, "max_tokens": max_tokens}

    def answer_text(self, answer: object) -> str:
        """The content of the first choice."""
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else None
        return text if isinstance(text, str) else ""

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        messages = body.get("messages")
        return count_messages(messages) if isinstance(messages, list) else 0

    def _choice_chunks(
        self, base: dict[str, Any], index: int, choice: Mapping[str, Any]
    ) -> Iterator[dict[str, Any]]:
        message = choice.get("message") or {}
        first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
        if message.get("refusal") is not None:
            first["refusal"] = message["refusal"]
        yield {**base, "choices": [_chat_delta(index, first, None)]}
        for piece in pieces(message.get("content") or ""):
            yield {**base, "choices": [_chat_delta(index, {"content": piece}, None)]}
        for position, call in enumerate(message.get("tool_calls") or []):
            delta = {"tool_calls": [{"index": position, **call}]}
            yield {**base, "choices": [_chat_delta(index, delta, None)]}
        yield {**base, "choices": [_chat_delta(index, {}, choice.get("finish_reason", "stop"))]}


class Completions(_Choices):
    """``POST /v1/completions`` (legacy), keyed on its prompt; a batch of prompts bypasses."""

    name = "completion"
    path = "/v1/completions"
    object_prefix = "cmpl"
    chunk_object = "text_completion"
    response_object = "text_completion"

    def parse(self, body: object, keying: Keying) -> Parsed:
        """Raises:
        InvalidRequestError: ``model`` or ``prompt`` is missing or of the wrong type.
        """
        body = json_object(body)
        model = model_of(body)
        prompt = body.get("prompt")
        stream, include_usage = _stream_flags(body)
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list):
            return Parsed(self, model, stream, include_usage, None, "a batch of prompts")
        if not isinstance(prompt, str):
            raise InvalidRequestError("'prompt' must be a string or an array", field="prompt")
        if not prompt.strip():
            return Parsed(self, model, stream, include_usage, None, "the prompt is empty")
        context = {k: v for k, v in body.items() if k not in _NOT_IN_SCOPE and k != "prompt"}
        context["kind"] = "completion"
        request = keying.request(prompt, context)
        return Parsed(self, model, stream, include_usage, request)

    def _valid_choice(self, choice: dict[str, Any]) -> bool:
        return isinstance(choice.get("text"), str)

    def _valid_delta_choice(self, choice: dict[str, Any]) -> bool:
        return optional(choice.get("text"), str)

    def generated_texts(self, answer: object) -> list[str]:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        texts = [
            choice.get("text")
            for choice in (choices if isinstance(choices, list) else [])
            if isinstance(choice, dict)
        ]
        return [t for t in texts if isinstance(t, str) and t]

    def answer_text(self, answer: object) -> str:
        texts = self.generated_texts(answer)
        return texts[0] if texts else ""

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        raw = body.get("prompt")
        texts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        return sum(count_text(t) for t in texts if isinstance(t, str))

    def _choice_chunks(
        self, base: dict[str, Any], index: int, choice: Mapping[str, Any]
    ) -> Iterator[dict[str, Any]]:
        for piece in pieces(choice.get("text") or ""):
            yield {**base, "choices": [_completion_delta(index, piece, None)]}
        yield {
            **base,
            "choices": [_completion_delta(index, "", choice.get("finish_reason", "stop"))],
        }


def _chat_delta(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _completion_delta(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _valid_message(message: object) -> bool:
    if not isinstance(message, dict):
        return False
    if not all(optional(message.get(k), str) for k in ("role", "content", "refusal")):
        return False
    return _valid_tool_calls(message.get("tool_calls"), streamed=False)


def _valid_delta(delta: object) -> bool:
    if not isinstance(delta, dict):
        return False
    if not all(optional(delta.get(k), str) for k in ("role", "content", "refusal")):
        return False
    return _valid_tool_calls(delta.get("tool_calls"), streamed=True)


def _valid_tool_calls(calls: object, *, streamed: bool) -> bool:
    if calls is None:
        return True
    if not isinstance(calls, list):
        return False
    for call in calls:
        if not isinstance(call, dict) or not optional(call.get("id"), str):
            return False
        if streamed and not optional_int(call.get("index")):
            return False
        function = call.get("function")
        if function is None and streamed:
            continue
        if not isinstance(function, dict):
            return False
        if not all(optional(function.get(k), str) for k in ("name", "arguments")):
            return False
    return True


class ChunkAssembler(Assembler):
    """Rebuilds the complete answer from the chunks of a streamed one."""

    def __init__(self, dialect: _Choices, *, hide_usage: bool = False) -> None:
        super().__init__()
        self.dialect = dialect
        self.hide_usage = hide_usage
        self.meta: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    @property
    def started(self) -> bool:
        """Whether any chunk with an answer's content or usage arrived."""
        return bool(self.choices) or self.usage is not None

    def feed(self, event: bytes) -> Event:
        _, data = sse_fields(event)
        if not data:
            return Event.PASS
        if data == b"[DONE]":
            self.done = True
            return Event.PASS
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.malformed = True
            return Event.MALFORMED
        if not self.add(chunk):
            return Event.MALFORMED
        if self.hide_usage and chunk.get("choices") == [] and chunk.get("usage") is not None:
            return Event.HIDE
        return Event.PASS

    def add(self, chunk: object) -> bool:
        """Add one parsed chunk; ``False`` (and ``malformed`` set) when it is not a chunk of
        this API, which is then ignored."""
        if not self.dialect.valid_chunk(chunk):
            self.malformed = True
            return False
        assert isinstance(chunk, dict)
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and chunk[key] is not None:
                self.meta.setdefault(key, chunk[key])
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or []:
            index = delta_choice.get("index", 0)
            choice = self.choices.setdefault(index, {"index": index, "finish_reason": None})
            if delta_choice.get("finish_reason") is not None:
                choice["finish_reason"] = delta_choice["finish_reason"]
            if self.dialect.name == "chat":
                self._feed_chat(choice, delta_choice.get("delta") or {})
            else:
                choice["text"] = choice.get("text", "") + (delta_choice.get("text") or "")
        return True

    def _feed_chat(self, choice: dict[str, Any], delta: Mapping[str, Any]) -> None:
        message = choice.setdefault("message", {"role": "assistant", "content": None})
        if delta.get("role"):
            message["role"] = delta["role"]
        if delta.get("content") is not None:
            message["content"] = (message["content"] or "") + delta["content"]
        if delta.get("refusal") is not None:
            message["refusal"] = (message.get("refusal") or "") + delta["refusal"]
        for call in delta.get("tool_calls") or []:
            calls = message.setdefault("tool_calls", [])
            position = call.get("index", len(calls))
            while len(calls) <= position:
                calls.append(
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
            target = calls[position]
            if call.get("id"):
                target["id"] = call["id"]
            function = call.get("function") or {}
            target["function"]["name"] += function.get("name") or ""
            target["function"]["arguments"] += function.get("arguments") or ""

    def result(self) -> dict[str, Any]:
        response: dict[str, Any] = {
            "id": self.meta.get("id", self.dialect.new_id()),
            "object": self.dialect.response_object,
            "created": self.meta.get("created", now_s(None)),
            "model": self.meta.get("model", ""),
            "choices": [self.choices[i] for i in sorted(self.choices)],
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self.meta:
                response[key] = self.meta[key]
        if self.usage is not None:
            response["usage"] = self.usage
        return response
