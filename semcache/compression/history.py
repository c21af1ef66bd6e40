"""A chat history laid out for compression: what must stay verbatim, what may be shortened,
and the fixed blocks the shortened part is cut into.

A history is ``head + body + tail``. The head is the leading system (or developer) messages;
the tail is the last ``keep_turns`` turns, the current user message included. Both are sent as
they are, and so is every message of the body that is not plain text from the user or the
assistant: tool calls and their results, messages with images or audio, system messages in the
middle. The body's plain-text messages are what compression shortens.

A turn starts at a user message (an Anthropic user message that carries tool results belongs to
the turn of the tool call). The body is cut into **blocks** at turn starts, greedily from its
beginning: a block closes at the first turn start after it holds ``block_tokens`` tokens. Earlier
messages of a conversation never change, so neither do its closed blocks: whatever a mode makes
of a closed block is made again, byte for byte, on every later turn, and the provider's prompt
cache keeps matching the prefix. The last block, still filling, is *open*.

The message layout is the one OpenAI's Chat Completions and Anthropic's Messages share: a
``role`` and a ``content`` that is a string or a list of parts, text parts being
``{"type": "text", "text": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from semcache.compression.texts import tokens_in

_HEAD_ROLES = frozenset({"system", "developer"})
_TEXT_ROLES = frozenset({"user", "assistant"})
_TOOL_FIELDS = ("tool_calls", "function_call", "tool_call_id")


@dataclass(frozen=True)
class Slot:
    """One message of the body."""

    position: int  # in the body
    message: Mapping[str, Any]
    tokens: int
    texts: tuple[str, ...] | None  # the text parts compression may shorten; None: verbatim

    @property
    def role(self) -> str:
        return str(self.message.get("role"))


@dataclass(frozen=True)
class Block:
    slots: tuple[Slot, ...]
    closed: bool

    @property
    def tokens(self) -> int:
        return sum(slot.tokens for slot in self.slots)


@dataclass(frozen=True)
class History:
    head: tuple[Mapping[str, Any], ...]
    body: tuple[Slot, ...]
    tail: tuple[Mapping[str, Any], ...]
    tokens: int  # of the whole history, as counted for a chat request

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, Any]], keep_turns: int) -> History:
        head_end = 0
        while head_end < len(messages) and messages[head_end].get("role") in _HEAD_ROLES:
            head_end += 1
        rest = messages[head_end:]
        starts = [i for i, m in enumerate(rest) if starts_turn(m)]
        tail_start = starts[-keep_turns] if len(starts) >= keep_turns else 0
        body = tuple(
            Slot(i, m, message_tokens(m), compressible_texts(m))
            for i, m in enumerate(rest[:tail_start])
        )
        return cls(
            head=tuple(messages[:head_end]),
            body=body,
            tail=tuple(rest[tail_start:]),
            tokens=count_history(messages),
        )

    def blocks(self, block_tokens: int) -> list[Block]:
        blocks: list[Block] = []
        current: list[Slot] = []
        filled = 0
        for slot in self.body:
            if current and filled >= block_tokens and starts_turn(slot.message):
                blocks.append(Block(tuple(current), closed=True))
                current, filled = [], 0
            current.append(slot)
            filled += slot.tokens
        if current:
            blocks.append(Block(tuple(current), closed=False))
        return blocks


def starts_turn(message: Mapping[str, Any]) -> bool:
    if message.get("role") != "user":
        return False
    content = message.get("content")
    return not (
        isinstance(content, list)
        and any(isinstance(p, Mapping) and p.get("type") == "tool_result" for p in content)
    )


def compressible_texts(message: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The texts of a plain user or assistant message, ``None`` for a message that must be
    sent as it is (a tool call or result, a non-text part, another role)."""
    if message.get("role") not in _TEXT_ROLES or any(f in message for f in _TOOL_FIELDS):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return (content,)
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text"):
                return None
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        return tuple(texts)
    return None


def with_texts(message: Mapping[str, Any], texts: Sequence[str]) -> dict[str, Any]:
    """``message`` with its text parts replaced, every other field as it was."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": texts[0]}
    assert isinstance(content, list)
    return {**message, "content": [{**p, "text": t} for p, t in zip(content, texts, strict=True)]}


_PER_MESSAGE = 3  # OpenAI's chat format adds about three tokens of framing per message


def message_tokens(message: Mapping[str, Any]) -> int:
    content = message.get("content")
    total = _PER_MESSAGE
    if isinstance(content, str):
        total += tokens_in(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                for key in ("text", "content"):
                    if isinstance(part.get(key), str):
                        total += tokens_in(part[key])
    for key in _TOOL_FIELDS:
        if key in message:
            total += tokens_in(str(message[key]))
    return total


def count_history(messages: Sequence[Mapping[str, Any]]) -> int:
    return 3 + sum(message_tokens(m) for m in messages)
