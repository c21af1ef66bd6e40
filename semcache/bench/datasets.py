"""Reading benchmark inputs: the formats of ``shared/data`` and a user's request log."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from semcache.errors import InvalidRequestError
from semcache.evaluation import in_split
from semcache.keys import fingerprint, normalize_prompt

DEFAULT_MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class StreamItem:
    """One request of a replayed stream.

    ``label`` groups requests that may share an answer (a cluster, a conversation turn and its
    paraphrase); ``None`` when the data has no labels, and then a hit counts as right only for
    the same text.
    """

    body: dict[str, Any]
    label: Hashable | None
    text: str  # the last user message
    kind: str = ""  # conversations: opening, follow-up, follow-up after reworded history
    reference: str | None = None  # conversations: the assistant's answer to it in the data


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Raises InvalidRequestError naming the line that is not a JSON object."""
    rows = []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc}", field="file") from exc
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"{path}:{number} is not JSON: {exc}", field="file") from None
        if not isinstance(row, dict):
            raise InvalidRequestError(f"{path}:{number} is not a JSON object", field="file")
        rows.append(row)
    if not rows:
        raise InvalidRequestError(f"{path} has no rows", field="file")
    return rows


def detect_format(row: dict[str, Any]) -> str:
    """pairs, clusters, prompts, conversations or requests, from the keys of a row."""
    if {"a", "b", "duplicate"} <= row.keys():
        return "pairs"
    if "model" in row and ("messages" in row or "prompt" in row):
        return "requests"
    if "messages" in row:
        return "conversations"
    if "cluster" in row and "text" in row:
        return "clusters"
    if "text" in row:
        return "prompts"
    raise InvalidRequestError(
        f"cannot tell the format of a row with keys {sorted(row)}: expected pairs (a, b, "
        f"duplicate), clusters (cluster, text), prompts (text), conversations (messages) or "
        f"OpenAI request bodies (model, messages)",
        field="file",
    )


def stream_rows(rows: list[dict[str, Any]], split: str | None) -> list[dict[str, Any]]:
    """The rows of a stream in ``split``: a row's own ``split`` field where it has one
    (BANKING77's train and test), else its position by the rule of the pair files (test is
    ``position % 10 == 0``), so that a verifier trained on the rest is measured on rows it
    never saw."""
    if split is None or split == "all":
        return rows
    return [
        row
        for position, row in enumerate(rows)
        if (
            row["split"] == split
            if isinstance(row.get("split"), str)
            else in_split(position, split)
        )
    ]


def stream_items(
    rows: list[dict[str, Any]], fmt: str, model: str = DEFAULT_MODEL
) -> list[StreamItem]:
    if fmt == "clusters":
        return [_ask(row["text"], ("cluster", row["cluster"]), model) for row in rows]
    if fmt == "prompts":
        return [_ask(row["text"], None, model) for row in rows]
    if fmt == "conversations":
        return _conversation_items(rows, model)
    if fmt == "requests":
        items = []
        for row in rows:
            body = {**row, "stream": False}
            messages = body.get("messages") or []
            last = messages[-1].get("content") if messages else body.get("prompt")
            items.append(StreamItem(body, None, last if isinstance(last, str) else ""))
        return items
    raise InvalidRequestError(f"{fmt} rows cannot be streamed; use --mode pairs", field="mode")


def _ask(text: str, label: Hashable | None, model: str) -> StreamItem:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return StreamItem(body, label, text)


REWORDED_HISTORY = "follow-up after reworded history"


def _conversation_items(rows: list[dict[str, Any]], model: str) -> list[StreamItem]:
    """Every user turn with the turns before it; paraphrases (MeanCache's ``paraphrases``,
    keyed by message index) become extra requests with the same label as their original, and
    a follow-up is also asked after the paraphrase of the turn that opened its conversation
    (kind ``follow-up after reworded history``), the assistant's answer unchanged.

    A turn's label is what it asks: its text and everything said before it. The same question
    opening two conversations is one label (an answer to one is right for the other); the same
    follow-up after different histories is two, and after a paraphrase of the same opening, one
    (the row's paraphrase says it asks the same)."""
    items = []
    for row in rows:
        messages = row["messages"]
        paraphrases = row.get("paraphrases") or {}
        opening = paraphrases.get("0") if isinstance(paraphrases.get("0"), str) else None
        for index, message in enumerate(messages):
            if message.get("role") != "user" or not isinstance(message.get("content"), str):
                continue
            said = fingerprint({"prior": messages[:index]})
            label = ("turn", said, normalize_prompt(message["content"]))
            variants = [message["content"]]
            if isinstance(paraphrases.get(str(index)), str):
                variants.append(paraphrases[str(index)])
            histories = [(messages[:index], "opening" if index == 0 else "follow-up")]
            if index > 0 and opening is not None and messages[0].get("role") == "user":
                reworded = [{**messages[0], "content": opening}, *messages[1:index]]
                histories.append((reworded, REWORDED_HISTORY))
            after = messages[index + 1] if index + 1 < len(messages) else {}
            reference = after.get("content") if after.get("role") == "assistant" else None
            for prior, kind in histories:
                for text in variants:
                    body = {"model": model, "messages": [*prior, {"role": "user", "content": text}]}
                    items.append(
                        StreamItem(
                            body,
                            label,
                            text,
                            kind,
                            reference if isinstance(reference, str) else None,
                        )
                    )
    return items


def scope_of(item: StreamItem) -> dict[str, Any]:
    """What scopes a stream item's answer besides its last user text: the rest of its body and
    the turns before it (as the sidecar scopes a request)."""
    messages = item.body.get("messages") or []
    rest = {k: v for k, v in item.body.items() if k not in ("messages", "stream")}
    return {"body": rest, "prior": messages[:-1]}


def same_reference(query: StreamItem, source: StreamItem) -> bool:
    """Whether the data answers both requests with the very same text (conversations: some
    rows give one answer to differently worded questions, and the same follow-up answer after
    it). A hit the labels count wrong may still be the answer the data gives."""
    return query.reference is not None and query.reference == source.reference


def same_answer(query: StreamItem, source: StreamItem) -> tuple[bool, bool, bool]:
    """(right, wrong, unverified) for a hit on ``source``'s answer: right for the same request
    (the same text after normalisation, after the same turns), else by the labels."""
    same_request = normalize_prompt(query.text) == normalize_prompt(source.text) and (
        query.body.get("messages", [])[:-1] == source.body.get("messages", [])[:-1]
    )
    if same_request:
        return True, False, False
    if query.label is not None:
        right = query.label == source.label
        return right, not right, False
    same = normalize_prompt(query.text) == normalize_prompt(source.text)
    return same, False, not same
