"""OpenAI's wire format, without HTTP: from request bodies to cache requests, and from stored
answers back to responses and stream chunks.

The sidecar parses a body with :func:`parse_chat` or :func:`parse_completion`, looks the result
up in the core, and renders a hit with :func:`render_hit` or :func:`stream_hit`. On a miss it
assembles what the upstream streamed with :class:`StreamAssembler` and stores the result only if
:func:`finished_normally` says so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from semcache.errors import InvalidRequestError
from semcache.keys import CacheRequest

# Fields that do not change the answer: everything else in a body goes into the scope, so a
# field OpenAI adds tomorrow separates entries rather than mixing them.
_NOT_IN_SCOPE = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})
_STORABLE_FINISH = frozenset({"stop", "length"})
_CHUNK_CHARS = 24


@dataclass(frozen=True)
class Parsed:
    """A parsed request: ``request`` is None when the body must bypass the cache (``bypass``
    says why)."""

    kind: str  # "chat" or "completion"
    model: str
    stream: bool
    include_usage: bool
    request: CacheRequest | None
    bypass: str | None = None


def parse_chat(
    body: object,
    *,
    namespace: str,
    min_similarity: float | None = None,
    ttl_s: float | None = None,
    min_confidence: float | None = None,
) -> Parsed:
    """Validate a ``/v1/chat/completions`` body and key it.

    The text embedded is the last user message; the scope covers the model, every other field
    that changes the answer (system prompt, tools, sampling parameters, response format …) and
    the prior turns, verbatim.

    Raises:
        InvalidRequestError: a required field is missing or of the wrong type (``field`` names it).
    """
    body = _object(body)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", field="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(
                f"'messages[{i}]' must be an object with a string 'role'", field=f"messages[{i}]"
            )
    stream, include_usage = _stream_flags(body)
    last = messages[-1]
    bypass = None
    prompt = None
    if last["role"] != "user":
        bypass = f"the last message is from {last['role']!r}, not the user"
    else:
        prompt = _text_of(last.get("content"))
        if prompt is None:
            bypass = "the last user message has non-text parts"
        elif not prompt.strip():
            bypass = "the last user message is empty"
    if prompt is None or bypass is not None:
        return Parsed("chat", model, stream, include_usage, None, bypass)
    context = {k: v for k, v in body.items() if k not in _NOT_IN_SCOPE and k != "messages"}
    context["kind"] = "chat"
    context["prior"] = messages[:-1]
    context["last_message_extra"] = {k: v for k, v in last.items() if k not in ("role", "content")}
    request = _cache_request(prompt, namespace, context, min_similarity, ttl_s, min_confidence)
    return Parsed("chat", model, stream, include_usage, request)


def parse_completion(
    body: object,
    *,
    namespace: str,
    min_similarity: float | None = None,
    ttl_s: float | None = None,
    min_confidence: float | None = None,
) -> Parsed:
    """Validate a legacy ``/v1/completions`` body and key it on its prompt.

    Raises:
        InvalidRequestError: ``model`` or ``prompt`` is missing or of the wrong type.
    """
    body = _object(body)
    model = _model(body)
    prompt = body.get("prompt")
    stream, include_usage = _stream_flags(body)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        return Parsed("completion", model, stream, include_usage, None, "a batch of prompts")
    if not isinstance(prompt, str):
        raise InvalidRequestError("'prompt' must be a string or an array", field="prompt")
    if not prompt.strip():
        return Parsed("completion", model, stream, include_usage, None, "the prompt is empty")
    context = {k: v for k, v in body.items() if k not in _NOT_IN_SCOPE and k != "prompt"}
    context["kind"] = "completion"
    request = _cache_request(prompt, namespace, context, min_similarity, ttl_s, min_confidence)
    return Parsed("completion", model, stream, include_usage, request)


def _cache_request(
    prompt: str,
    namespace: str,
    context: Mapping[str, Any],
    min_similarity: float | None,
    ttl_s: float | None,
    min_confidence: float | None,
) -> CacheRequest:
    return CacheRequest(
        prompt=prompt,
        namespace=namespace,
        context=context,
        min_similarity=min_similarity,
        ttl_s=ttl_s,
        min_confidence=min_confidence,
    )


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", field=None)
    if json_depth(body) > MAX_JSON_DEPTH:
        raise InvalidRequestError(
            f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", field=None
        )
    return body


# Far beyond any real request (a tool's JSON schema runs a dozen levels deep), and well within
# what the JSON encoder re-encodes (orjson stops at 255).
MAX_JSON_DEPTH = 128


def json_depth(value: object) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar is 0), without
    recursion."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' must be a non-empty string", field="model")
    return model


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean", field="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object", field="stream_options")
    return bool(stream), bool(options.get("include_usage", False))


def _text_of(content: object) -> str | None:
    """The text of a message's content, or None when it has parts other than text."""
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


def valid_answer(response: object, kind: str) -> bool:
    """Whether ``response`` has the shape of a complete chat (``kind`` "chat") or completions
    answer, every field a client reads of the right type: only such answers are stored, and
    only such entries are served."""
    if not isinstance(response, dict) or not _optional_usage(response.get("usage")):
        return False
    if not all(
        _optional(response.get(key), str)
        for key in ("id", "model", "object", "system_fingerprint", "service_tier")
    ):
        return False
    if not _optional_int(response.get("created")):
        return False
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if not isinstance(choice, dict) or not _optional(choice.get("finish_reason"), str):
            return False
        if not _optional_int(choice.get("index")):
            return False
        if kind == "chat":
            if not _valid_message(choice.get("message")):
                return False
        elif not isinstance(choice.get("text"), str):
            return False
    return True


def valid_chunk(chunk: object, kind: str) -> bool:
    """Whether one streamed event has the shape of a chat or completions chunk."""
    if not isinstance(chunk, dict) or not _optional_usage(chunk.get("usage")):
        return False
    choices = chunk.get("choices")
    if choices is None:
        return True
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict) or not _optional_int(choice.get("index")):
            return False
        if not _optional(choice.get("finish_reason"), str):
            return False
        if kind == "chat":
            delta = choice.get("delta")
            if delta is not None and not _valid_delta(delta):
                return False
        elif not _optional(choice.get("text"), str):
            return False
    return True


def _optional(value: object, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def _optional_int(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _optional_usage(usage: object) -> bool:
    if usage is None:
        return True
    if not isinstance(usage, dict):
        return False
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    return all(_optional_int(usage.get(name)) for name in counts)


def _valid_message(message: object) -> bool:
    if not isinstance(message, dict):
        return False
    if not all(_optional(message.get(k), str) for k in ("role", "content", "refusal")):
        return False
    return _valid_tool_calls(message.get("tool_calls"), streamed=False)


def _valid_delta(delta: object) -> bool:
    if not isinstance(delta, dict):
        return False
    if not all(_optional(delta.get(k), str) for k in ("role", "content", "refusal")):
        return False
    return _valid_tool_calls(delta.get("tool_calls"), streamed=True)


def _valid_tool_calls(calls: object, *, streamed: bool) -> bool:
    if calls is None:
        return True
    if not isinstance(calls, list):
        return False
    for call in calls:
        if not isinstance(call, dict) or not _optional(call.get("id"), str):
            return False
        if streamed and not _optional_int(call.get("index")):
            return False
        function = call.get("function")
        if function is None and streamed:
            continue
        if not isinstance(function, dict):
            return False
        if not all(_optional(function.get(k), str) for k in ("name", "arguments")):
            return False
    return True


def finished_normally(response: object) -> bool:
    """Whether an upstream answer is complete and worth storing: every choice ended with
    ``stop`` or ``length`` (not a tool call, a content filter or a cut)."""
    if not isinstance(response, dict):
        return False
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(
        isinstance(choice, dict) and choice.get("finish_reason") in _STORABLE_FINISH
        for choice in choices
    )


def answer_text(response: object) -> str:
    """The text of the first choice of an answer (chat message content or completion text);
    empty when there is none."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def generated_texts(response: object) -> list[str]:
    """Everything the model wrote in an answer, whole or cut: per choice its content, refusal
    and tool calls (name and arguments), or its completion text."""
    choices = response.get("choices") if isinstance(response, dict) else None
    texts: list[str] = []
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            texts.append(choice.get("text") or "")
            continue
        texts += [message.get("content") or "", message.get("refusal") or ""]
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts += [function.get("name") or "", function.get("arguments") or ""]
    return [t for t in texts if isinstance(t, str) and t]


def usage_tokens(response: object) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a stored answer, zeros when absent."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _new_id(kind: str) -> str:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return f"{prefix}-semcache-{uuid.uuid4().hex[:24]}"


def render_hit(stored: Mapping[str, Any], kind: str, *, now: float | None = None) -> dict[str, Any]:
    """A stored answer as a fresh response: new ``id`` and ``created``, the rest as stored."""
    response = dict(stored)
    response["id"] = _new_id(kind)
    response["created"] = int(time.time() if now is None else now)
    return response


def stream_hit(
    stored: Mapping[str, Any], kind: str, *, include_usage: bool, now: float | None = None
) -> Iterator[dict[str, Any]]:
    """Replay a stored answer as OpenAI stream chunks (without the final ``[DONE]``)."""
    response = render_hit(stored, kind, now=now)
    base = {
        "id": response["id"],
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": response["created"],
        "model": response.get("model", ""),
    }
    if "system_fingerprint" in response:
        base["system_fingerprint"] = response["system_fingerprint"]
    for choice in response.get("choices", []):
        index = choice.get("index", 0)
        if kind == "chat":
            yield from _chat_choice_chunks(base, index, choice)
        else:
            for piece in _pieces(choice.get("text") or ""):
                yield {**base, "choices": [_completion_delta(index, piece, None)]}
            yield {
                **base,
                "choices": [_completion_delta(index, "", choice.get("finish_reason", "stop"))],
            }
    if include_usage and "usage" in response:
        yield {**base, "choices": [], "usage": response["usage"]}


def _chat_choice_chunks(
    base: dict[str, Any], index: int, choice: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    message = choice.get("message") or {}
    first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
    if message.get("refusal") is not None:
        first["refusal"] = message["refusal"]
    yield {**base, "choices": [_chat_delta(index, first, None)]}
    for piece in _pieces(message.get("content") or ""):
        yield {**base, "choices": [_chat_delta(index, {"content": piece}, None)]}
    for position, call in enumerate(message.get("tool_calls") or []):
        delta = {"tool_calls": [{"index": position, **call}]}
        yield {**base, "choices": [_chat_delta(index, delta, None)]}
    yield {**base, "choices": [_chat_delta(index, {}, choice.get("finish_reason", "stop"))]}


def _chat_delta(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _completion_delta(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _pieces(text: str) -> Iterator[str]:
    """Split text at spaces into pieces of about ``_CHUNK_CHARS`` characters, losslessly."""
    start = 0
    while start < len(text):
        end = min(len(text), start + _CHUNK_CHARS)
        space = text.find(" ", end)
        end = len(text) if space == -1 or space - start > 4 * _CHUNK_CHARS else space + 1
        yield text[start:end]
        start = end


class StreamAssembler:
    """Rebuild the complete response from the chunks of a streamed answer."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.meta: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.malformed = False  # a chunk that is not a chunk arrived: the answer is unusable

    @property
    def started(self) -> bool:
        """Whether any chunk with an answer's content or usage arrived."""
        return bool(self.choices) or self.usage is not None

    def feed(self, chunk: object) -> bool:
        """Add one streamed event; ``False`` (and ``malformed`` set) when it is not a chunk of
        this kind, which is then ignored."""
        if not valid_chunk(chunk, self.kind):
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
            if self.kind == "chat":
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
            "id": self.meta.get("id", _new_id(self.kind)),
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.meta.get("created", int(time.time())),
            "model": self.meta.get("model", ""),
            "choices": [self.choices[i] for i in sorted(self.choices)],
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self.meta:
                response[key] = self.meta[key]
        if self.usage is not None:
            response["usage"] = self.usage
        return response
