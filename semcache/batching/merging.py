"""Merging small requests into one call, and splitting its answer, with no HTTP in it: what
every API shares (the API-specific parts are in :mod:`.protocols`).

A request can join a merged call when it is one user message after a shared prefix (the
system prompt) and nothing in it needs a call of its own: no stream, no tools, one choice, no
response format of its own, no stop sequences, no log probabilities. Members of one merged
call have the same **group**: the prefix and every other field, byte for byte.

The merged call sends the prefix once, then an instruction and the items as JSON, each with
an id, and asks for a structured answer (the API's structured-output mode, strict) with one
entry per id, in order. :func:`split` accepts an item's answer only when the entry at its
position carries its id, exactly once, quotes the end of the item's own input, and holds a
non-empty string answer within the members' length limit; anything else sends that item again
on its own, with the cause. An answer is never taken from a position, an id or a quote that
belongs to another item.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from semcache.tokens import count_text

# What the answers of a merged call cost beyond the items' own text: the JSON around each
# entry, and around the whole, in tokens.
_ENTRY_OVERHEAD = 24
_ANSWER_OVERHEAD = 32
# The most completion tokens a merged call asks for, unless one member alone may use more.
MAX_MERGED_TOKENS = 8192

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
    limit: int | None  # the completion tokens each answer may use (the same in the group)


def new_ids(count: int) -> list[str]:
    """Ids for the items of one merged call: short (each is sent twice and billed). They are
    not what protects an item: its position and the quote of its input are checked too."""
    return [str(i + 1) for i in range(count)]


def items_json(members: Sequence[Member], ids: Sequence[str]) -> str:
    """The user message of a merged call: the items with their ids."""
    items = [{"id": i, "input": m.prompt} for i, m in zip(ids, members, strict=True)]
    return orjson.dumps({"items": items}).decode()


def merged_limit(members: Sequence[Member]) -> int | None:
    """The completion tokens of a merged call: every member's allowance and the JSON around
    it, within what models commonly allow (beyond, answers that do not fit are cut and go
    alone)."""
    limit = members[0].limit
    if limit is None:
        return None
    wanted = len(members) * (limit + _ENTRY_OVERHEAD) + _ANSWER_OVERHEAD
    return min(wanted, max(limit, MAX_MERGED_TOKENS))


def group_of(prefix: object, rest: Mapping[str, Any]) -> str:
    return orjson.dumps({"prefix": prefix, "rest": rest}, option=orjson.OPT_SORT_KEYS).decode()


def schema(ids: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of a merged call's answer."""
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
    payload: object, ids: Sequence[str], inputs: Sequence[str], *, limit: int | None = None
) -> Split:
    """Each item's answer from the structured answer of a merged call (``payload``: the parsed
    JSON, or the :class:`Cause` of its absence, see :meth:`.protocols.Protocol.payload`);
    ``inputs`` are the items' prompts, in the order of ``ids``."""
    if isinstance(payload, Cause):
        return Split({}, dict.fromkeys(ids, payload))
    if not isinstance(payload, dict) or set(payload) != {"answers"}:
        return Split({}, dict.fromkeys(ids, Cause.MALFORMED))
    entries = payload["answers"]
    if not isinstance(entries, list):
        return Split({}, dict.fromkeys(ids, Cause.MALFORMED))
    seen: dict[str, int] = {}
    for entry in entries:
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(entry_id, str):
            seen[entry_id] = seen.get(entry_id, 0) + 1
    if any(entry_id not in ids for entry_id in seen):
        return Split({}, dict.fromkeys(ids, Cause.EXTRA))
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


def parse_json(content: str) -> object:
    """A structured answer's JSON, or :attr:`Cause.INVALID_JSON`."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return Cause.INVALID_JSON


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
