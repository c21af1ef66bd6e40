"""What every API shape (dialect) provides, and what they share.

A dialect owns one request/response format end to end, without HTTP: it parses a body into a
:class:`Parsed` (the cache request, or why the body bypasses the cache), renders a stored answer
as a fresh response or replays it as the event stream a client of that API expects, assembles a
streamed answer from the upstream's events (refusing malformed ones), says whether an answer is
valid and finished normally (only such answers are stored), reads its usage, and counts its
prompt with the tokenizer. The sidecar holds no knowledge of any one API beyond the dialect it
picks by path.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from semcache.errors import InvalidRequestError
from semcache.keys import CacheRequest

# Far beyond any real request (a tool's JSON schema runs a dozen levels deep), and well within
# what the JSON encoder re-encodes (orjson stops at 255).
MAX_JSON_DEPTH = 128
# A typical answer's length, for rate limits when a request sets no limit of its own.
DEFAULT_COMPLETION_ESTIMATE = 256


@dataclass(frozen=True)
class Parsed:
    """A parsed request: ``request`` is None when the body must bypass the cache (``bypass``
    says why)."""

    dialect: Dialect
    model: str
    stream: bool
    include_usage: bool  # a stream whose client asked for the usage (always, where the API
    # puts it in its events)
    request: CacheRequest | None
    bypass: str | None = None


@dataclass(frozen=True)
class Keying:
    """Where a parsed request is stored and how strictly it is matched: its namespace (the
    tenant, subdivided) and its per-request thresholds and lifetime."""

    namespace: str
    min_similarity: float | None = None
    ttl_s: float | None = None
    min_confidence: float | None = None

    @classmethod
    def of(cls, request: CacheRequest) -> Keying:
        """The keying a parsed request was made with, to parse its body again."""
        return cls(request.namespace, request.min_similarity, request.ttl_s, request.min_confidence)

    def request(self, prompt: str, context: Mapping[str, Any]) -> CacheRequest:
        return CacheRequest(
            prompt=prompt,
            namespace=self.namespace,
            context=context,
            min_similarity=self.min_similarity,
            ttl_s=self.ttl_s,
            min_confidence=self.min_confidence,
        )


class Event(enum.Enum):
    """What the relay does with one upstream event."""

    PASS = "pass"  # relay it
    HIDE = "hide"  # keep it from the client (a usage chunk it did not ask for)
    MALFORMED = "malformed"  # not an event of this API: end the stream with an error


class Assembler:
    """Rebuilds the complete answer from a streamed one, event by event."""

    def __init__(self) -> None:
        self.done = False  # the API's end of stream arrived
        self.malformed = False  # an event that is not one of this API's arrived

    @property
    def started(self) -> bool:
        raise NotImplementedError

    def feed(self, event: bytes) -> Event:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError


class Dialect:
    """One API shape. Subclasses set the class attributes and implement the methods."""

    name: str  # also the label of its metrics
    path: str  # where the sidecar serves it
    api: str  # "openai" or "anthropic": which upstreams speak it
    object_prefix: str  # of the ids of rendered hits
    turns_field: str | None = None  # the body's list of conversation turns, if it has one

    def parse(self, body: object, keying: Keying) -> Parsed:
        """The cache request of a body, or why it bypasses the cache.

        Raises:
            InvalidRequestError: a required field is missing or of the wrong type (``field``
                names it).
        """
        raise NotImplementedError

    def valid_answer(self, answer: object) -> bool:
        raise NotImplementedError

    def finished_normally(self, answer: object) -> bool:
        raise NotImplementedError

    def render_hit(self, stored: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def replay(
        self, stored: Mapping[str, Any], *, include_usage: bool, now: float | None = None
    ) -> Iterator[bytes]:
        """A stored answer as this API's event stream, end marker included."""
        raise NotImplementedError

    def assembler(self, *, hide_usage: bool = False) -> Assembler:
        raise NotImplementedError

    def with_usage_in_stream(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The body to send so that a streamed answer reports its usage, and whether the
        client did not ask for it (the relay then hides it)."""
        return body, False

    def usage(self, answer: object) -> tuple[int, int]:
        """``(prompt tokens, completion tokens)`` of an answer, zeros when absent."""
        raise NotImplementedError

    def cached_prompt_tokens(self, answer: object) -> int:
        """The prompt tokens the provider read from its prompt cache (billed at a discount)."""
        return 0

    # A chat history, for context compression (:mod:`semcache.compression`). ``note_role`` is
    # the role of the messages compression adds; ``None``: this API has no chat history.
    note_role: str | None = None

    def history(self, body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The messages of a chat request, ``None`` when there is nothing to compress."""
        return None

    def with_history(
        self, body: Mapping[str, Any], messages: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {**body, "messages": messages}

    def summary_request(
        self, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> tuple[str, dict[str, Any]]:
        """The path and body that ask ``model`` for a summary (``messages``: a system
        instruction and a user message), in this API."""
        raise NotImplementedError

    def generated_texts(self, answer: object) -> list[str]:
        """Everything the model wrote in an answer, whole or cut (for the bill of a cut one)."""
        raise NotImplementedError

    def answer_text(self, answer: object) -> str:
        """The text of an answer, for comparing two answers by meaning."""
        return "\n".join(self.generated_texts(answer))

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def completion_allowance(self, body: Mapping[str, Any]) -> int:
        """Completion tokens a request may use: its own limit, else a typical answer."""
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return positive_int(limit) or DEFAULT_COMPLETION_ESTIMATE

    def request_tokens(self, body: Mapping[str, Any]) -> int:
        """Tokens a request may use, for rate limits before it is sent (settled from the
        answer's usage afterwards)."""
        choices = positive_int(body.get("n")) or 1
        return self.prompt_tokens(body) + self.completion_allowance(body) * choices

    def stream_error(self, message: str, code: str) -> bytes:
        """The event that tells a client of this API that its stream failed (the status line
        is long gone by then)."""
        error = {"message": message, "type": "upstream_error", "param": None, "code": code}
        return sse({"error": error})

    def new_id(self) -> str:
        return f"{self.object_prefix}-semcache-{uuid.uuid4().hex[:24]}"


# -- helpers the dialects share ------------------------------------------------------------


def json_object(body: object) -> dict[str, Any]:
    """``body`` as a JSON object of bounded depth.

    Raises:
        InvalidRequestError: not an object, or nested deeper than ``MAX_JSON_DEPTH``.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", field=None)
    if json_depth(body) > MAX_JSON_DEPTH:
        raise InvalidRequestError(
            f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", field=None
        )
    return body


def json_depth(value: object) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar is 0), without
    recursion; stops counting past ``MAX_JSON_DEPTH``."""
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


def model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' must be a non-empty string", field="model")
    return model


def messages_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A body's ``messages``: a non-empty array of objects with a string ``role``.

    Raises:
        InvalidRequestError: naming the message at fault.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", field="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(
                f"'messages[{i}]' must be an object with a string 'role'", field=f"messages[{i}]"
            )
    return messages


def stream_flag(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean", field="stream")
    return bool(stream)


def optional(value: object, expected: type) -> bool:
    return value is None or isinstance(value, expected)


def optional_int(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def chat_history(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        return messages
    return None


def nested_int(value: object, *path: str) -> int:
    """The integer at ``path`` in nested objects, 0 when absent or not an integer."""
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def counts(usage: object, prompt: str, completion: str) -> tuple[int, int]:
    """Two token counts of a usage object, zeros where absent or not integers."""
    if not isinstance(usage, dict):
        return 0, 0
    first, second = usage.get(prompt, 0), usage.get(completion, 0)
    return (
        first if isinstance(first, int) and not isinstance(first, bool) else 0,
        second if isinstance(second, int) and not isinstance(second, bool) else 0,
    )


def valid_counts(usage: object, names: tuple[str, ...]) -> bool:
    if usage is None:
        return True
    return isinstance(usage, dict) and all(optional_int(usage.get(n)) for n in names)


def sse(data: object, event: str | None = None) -> bytes:
    """One server-sent event."""
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def sse_fields(event: bytes) -> tuple[str | None, bytes]:
    """The ``event:`` name and the joined ``data:`` lines of one SSE event block."""
    name = None
    data = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip())
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    return name, b"\n".join(data)


def pieces(text: str, size: int = 24) -> Iterator[str]:
    """Split text at spaces into pieces of about ``size`` characters, losslessly (how a
    replayed hit is streamed)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        space = text.find(" ", end)
        end = len(text) if space == -1 or space - start > 4 * size else space + 1
        yield text[start:end]
        start = end


def now_s(now: float | None) -> int:
    return int(time.time() if now is None else now)
