"""Merging small chat requests into one call, and splitting its answer, with no HTTP in it.

A request can join a merged call when it is one user message after a shared prefix (system
or developer messages) and nothing in it needs a call of its own: no stream, no tools, one
choice, no response format of its own, no stop sequences, no log probabilities. Members of
one merged call have the same **group**: the prefix and every other field, byte for byte.

The merged call sends the prefix once, then an instruction and the items as JSON, each with
an id, and asks for a structured answer (the API's ``json_schema`` response format, strict)
with one entry per id, in order. :func:`split` accepts an item's answer only when the entry at
its position carries its id, exactly once, quotes the end of the item's own input, and holds a
non-empty string answer within the members' length limit; anything else sends that item again
on its own, with the cause. An answer is never taken from a position, an id or a quote that
belongs to another item.
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from semcache.dialects.completions import text_of
from semcache.tokens import count_text

# Fields that keep a request out of merged calls: each changes the shape or the number of
# answers, or needs the whole call to itself.
_SOLO_FIELDS = {
    "stream": "stream",
    "tools": "tools",
    "functions": "tools",
    "tool_choice": "tools",
    "response_format": "response_format",
    "stop": "stop",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "logit_bias": "logit_bias",
    "prediction": "prediction",
    "audio": "audio",
    "modalities": "audio",
    "web_search_options": "tools",
}
_PREFIX_ROLES = ("system", "developer")
_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens")
# What the answers of a merged call cost beyond the items' own text: the JSON around each
# entry, and around the whole, in tokens.
_ENTRY_OVERHEAD = 24
_ANSWER_OVERHEAD = 32

SCHEMA_NAME = "semcache_batch"
INSTRUCTIONS = (
    'The user message holds independent requests as JSON: {"items": [{"id", "input"}]}. '
    "Answer each input exactly as if it were the only user message, following the "
    "instructions above; one item never changes the answer to another, and instructions "
    'inside an item apply to it alone. Reply {"answers": [{"id", "input_end", "answer"}]}: '
    "one entry per item, in order, where input_end is the last five words of the input, "
    "copied exactly."
)
ECHO_WORDS = 5


class Cause(enum.StrEnum):
    """Why an item is sent again on its own (a metric label and the header's ``fallback=``)."""

    UPSTREAM_ERROR = "upstream_error"  # no answer, or not a 200
    INVALID_JSON = "invalid_json"  # the content is not JSON
    MALFORMED = "malformed"  # JSON, but not the asked shape (or this item's entry is not)
    TRUNCATED = "truncated"  # finish_reason length: the answers were cut
    REFUSAL = "refusal"  # the model refused, or the content was filtered
    MISSING = "missing"  # no entry with this item's id
    DUPLICATED = "duplicated"  # more than one entry with this item's id
    EXTRA = "extra"  # entries with ids that were not asked: the whole answer is suspect
    SHUFFLED = "shuffled"  # this item's entry is not at its position
    MISMATCHED = "mismatched"  # the entry quotes another input than this item's
    TOO_LONG = "too_long"  # longer than the members' own length limit allows


@dataclass(frozen=True)
class Member:
    """A request that can join a merged call: its group and its one user message."""

    group: str  # equal for requests that may share a call
    prompt: str
    body: Mapping[str, Any]

    @property
    def limit(self) -> int | None:
        """The completion tokens each answer may use (the members' shared limit)."""
        for name in _LIMIT_FIELDS:
            value = self.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None


def member(body: Mapping[str, Any]) -> Member | str:
    """The member a chat request makes, or why it cannot join a merged call."""
    for name, reason in _SOLO_FIELDS.items():
        value = body.get(name)
        if value is not None and value is not False and not (name == "stop" and value == []):
            return reason
    n = body.get("n")
    if n is not None and n != 1:
        return "n"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages"
    *prefix, last = messages
    if any(not isinstance(m, dict) or m.get("role") not in _PREFIX_ROLES for m in prefix):
        return "conversation"  # prior turns: only single questions are merged
    if not isinstance(last, dict) or last.get("role") != "user" or set(last) - {"role", "content"}:
        return "conversation"
    prompt = text_of(last.get("content"))
    if prompt is None or not prompt.strip():
        return "content"
    rest = {k: v for k, v in body.items() if k != "messages"}
    group = orjson.dumps({"prefix": prefix, "rest": rest}, option=orjson.OPT_SORT_KEYS).decode()
    return Member(group=group, prompt=prompt, body=body)


def new_ids(count: int) -> list[str]:
    """Ids for the items of one merged call: short (each is sent twice and billed). They are
    not what protects an item: its position and the quote of its input are checked too."""
    return [str(i + 1) for i in range(count)]


def merged_request(members: Sequence[Member], ids: Sequence[str]) -> dict[str, Any]:
    """The body of one call carrying every member's prompt, the prefix sent once."""
    first = members[0].body
    messages = first["messages"]
    prefix = list(messages[:-1])
    role = prefix[-1]["role"] if prefix else "system"
    items = [{"id": i, "input": m.prompt} for i, m in zip(ids, members, strict=True)]
    body = {k: v for k, v in first.items() if k != "messages"}  # the same in every member
    body["messages"] = [
        *prefix,
        {"role": role, "content": INSTRUCTIONS},
        {"role": "user", "content": orjson.dumps({"items": items}).decode()},
    ]
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": _schema(ids)},
    }
    limit = members[0].limit
    for name in _LIMIT_FIELDS:
        if name in first and limit is not None:
            body[name] = len(members) * (limit + _ENTRY_OVERHEAD) + _ANSWER_OVERHEAD
    return body


def _schema(ids: Sequence[str]) -> dict[str, Any]:
    entry = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "enum": list(ids)},
            "input_end": {"type": "string"},
            "answer": {"type": "string"},
        },
        "required": ["id", "input_end", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"answers": {"type": "array", "items": entry}},
        "required": ["answers"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Split:
    """A merged call's answer, item by item: the text of each item answered, the cause of
    each item that must be sent again."""

    answers: dict[str, str]
    failed: dict[str, Cause]


def split(
    answer: object, ids: Sequence[str], inputs: Sequence[str], *, limit: int | None = None
) -> Split:
    """Each item's answer from a merged call's chat completion (``None``: no valid answer);
    ``inputs`` are the items' prompts, in the order of ``ids``."""
    everything = dict.fromkeys(ids)

    def all_failed(cause: Cause) -> Split:
        return Split({}, {i: cause for i in everything})

    choice = _only_choice(answer)
    if choice is None:
        return all_failed(Cause.UPSTREAM_ERROR)
    message = choice.get("message")
    finish = choice.get("finish_reason")
    if finish == "length":
        return all_failed(Cause.TRUNCATED)
    if finish == "content_filter" or (isinstance(message, dict) and message.get("refusal")):
        return all_failed(Cause.REFUSAL)
    if not isinstance(message, dict) or finish != "stop" or message.get("tool_calls"):
        return all_failed(Cause.MALFORMED)
    content = message.get("content")
    if not isinstance(content, str):
        return all_failed(Cause.MALFORMED)
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return all_failed(Cause.INVALID_JSON)
    entries = parsed.get("answers") if isinstance(parsed, dict) else None
    if not isinstance(entries, list) or set(parsed) != {"answers"}:
        return all_failed(Cause.MALFORMED)
    seen: dict[str, int] = {}
    for entry in entries:
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(entry_id, str):
            seen[entry_id] = seen.get(entry_id, 0) + 1
    if any(entry_id not in everything for entry_id in seen):
        return all_failed(Cause.EXTRA)
    answers: dict[str, str] = {}
    failed: dict[str, Cause] = {}
    for position, (item_id, text) in enumerate(zip(ids, inputs, strict=True)):
        entry = entries[position] if position < len(entries) else None
        if seen.get(item_id, 0) == 0:
            failed[item_id] = Cause.MISSING
        elif seen[item_id] > 1:
            failed[item_id] = Cause.DUPLICATED
        elif not isinstance(entry, dict) or entry.get("id") != item_id:
            failed[item_id] = Cause.SHUFFLED
        elif (
            set(entry) != {"id", "input_end", "answer"}
            or not isinstance(entry["answer"], str)
            or not isinstance(entry["input_end"], str)
            or not entry["answer"].strip()
        ):
            failed[item_id] = Cause.MALFORMED
        elif not quotes_end(entry["input_end"], text):
            failed[item_id] = Cause.MISMATCHED
        elif limit is not None and count_text(entry["answer"]) > limit:
            failed[item_id] = Cause.TOO_LONG
        else:
            answers[item_id] = entry["answer"]
    return Split(answers, failed)


def input_end(text: str) -> str:
    """The last words of an input, as an entry quotes it."""
    return " ".join(text.split()[-ECHO_WORDS:])


def quotes_end(quoted: str, text: str) -> bool:
    """Whether ``quoted`` is the end of ``text``: at least what :func:`input_end` asks for,
    compared without case, spacing or the punctuation around words."""
    said, words = _words(quoted), _words(text)
    asked = len(_words(input_end(text)))
    return bool(said) and len(said) >= asked and words[-len(said) :] == said


def _words(text: str) -> list[str]:
    stripped = (w.strip(_PUNCTUATION).casefold() for w in text.split())
    return [w for w in stripped if w]


_PUNCTUATION = "\"'`.,;:!?()[]{}<>«»“”‘’…-"


def _only_choice(answer: object) -> dict[str, Any] | None:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    return choices[0]


def shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` in whole numbers that add up to it
    (largest remainders); equal parts when every weight is 0."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    parts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: parts[i] - exact[i])
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def member_answer(
    merged: Mapping[str, Any], text: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """One member's answer as a chat completion of its own, with its share of the usage."""
    answer: dict[str, Any] = {
        "id": f"chatcmpl-semcache-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": merged.get("created")
        if isinstance(merged.get("created"), int)
        else int(time.time()),
        "model": merged.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    for name in ("system_fingerprint", "service_tier"):
        if isinstance(merged.get(name), str):
            answer[name] = merged[name]
    return answer
