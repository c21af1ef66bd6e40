"""How each API takes part in request batching: which of its requests may be merged, the
merged request (its structured-output mode asking for the answers' schema), where the
structured answer is in its response, and one member's answer in its own response shape.

- OpenAI Chat Completions: a strict ``json_schema`` response format; the answer is the JSON
  content of the only choice.
- Anthropic Messages: one forced tool whose input schema is the answers' schema (Anthropic's
  way to a machine-checked shape); the answer is that tool call's input.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from semcache.batching.merging import (
    INSTRUCTIONS,
    SCHEMA_NAME,
    Cause,
    Member,
    group_of,
    items_json,
    merged_limit,
    parse_json,
    schema,
)
from semcache.dialects.completions import text_of
from semcache.dialects.messages import message_text


class Protocol:
    """One API's part in request batching."""

    name: str  # the dialect's name

    def member(self, body: Mapping[str, Any]) -> Member | str:
        """The member a request makes, or why it cannot join a merged call."""
        raise NotImplementedError

    def merged_request(self, members: Sequence[Member], ids: Sequence[str]) -> dict[str, Any]:
        """The body of one call carrying every member's prompt, the shared prefix once."""
        raise NotImplementedError

    def payload(self, answer: object) -> object:
        """The structured answer of a merged call (parsed JSON), or the :class:`Cause` of its
        absence (``answer`` None: the call failed)."""
        raise NotImplementedError

    def member_answer(
        self, merged: Mapping[str, Any], text: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        """One member's answer as a response of its own, with its share of the usage."""
        raise NotImplementedError


def _solo(body: Mapping[str, Any], fields: Mapping[str, str]) -> str | None:
    for name, reason in fields.items():
        value = body.get(name)
        if value is not None and value is not False and value != []:
            return reason
    return None


def _positive(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


class ChatProtocol(Protocol):
    name = "chat"
    # Fields that keep a request out of merged calls: each changes the shape or the number
    # of answers, or needs the whole call to itself.
    SOLO: ClassVar[Mapping[str, str]] = {
        "stream": "stream",
        "tools": "tools",
        "functions": "tools",
        "tool_choice": "tools",
        "web_search_options": "tools",
        "response_format": "response_format",
        "stop": "stop",
        "logprobs": "logprobs",
        "top_logprobs": "logprobs",
        "logit_bias": "logit_bias",
        "prediction": "prediction",
        "audio": "audio",
        "modalities": "audio",
    }
    PREFIX_ROLES = ("system", "developer")
    LIMITS = ("max_completion_tokens", "max_tokens")

    def member(self, body: Mapping[str, Any]) -> Member | str:
        reason = _solo(body, self.SOLO)
        if reason is not None:
            return reason
        if body.get("n") not in (None, 1):
            return "n"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages"
        *prefix, last = messages
        if any(not isinstance(m, dict) or m.get("role") not in self.PREFIX_ROLES for m in prefix):
            return "conversation"  # prior turns: only single questions are merged
        if (
            not isinstance(last, dict)
            or last.get("role") != "user"
            or set(last) - {"role", "content"}
        ):
            return "conversation"
        prompt = text_of(last.get("content"))
        if prompt is None or not prompt.strip():
            return "content"
        rest = {k: v for k, v in body.items() if k != "messages"}
        limit = next((v for n in self.LIMITS if (v := _positive(body.get(n))) is not None), None)
        return Member(group=group_of(prefix, rest), prompt=prompt, body=body, limit=limit)

    def merged_request(self, members: Sequence[Member], ids: Sequence[str]) -> dict[str, Any]:
        first = members[0].body
        prefix = list(first["messages"][:-1])
        role = prefix[-1]["role"] if prefix else "system"
        body = {k: v for k, v in first.items() if k != "messages"}  # the same in every member
        body["messages"] = [
            *prefix,
            {"role": role, "content": INSTRUCTIONS},
            {"role": "user", "content": items_json(members, ids)},
        ]
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": schema(ids)},
        }
        limit = merged_limit(members)
        for name in self.LIMITS:
            if name in first and limit is not None:
                body[name] = limit
        return body

    def payload(self, answer: object) -> object:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return Cause.UPSTREAM_ERROR
        choice = choices[0]
        message = choice.get("message")
        finish = choice.get("finish_reason")
        if finish == "length":
            return Cause.TRUNCATED
        if finish == "content_filter" or (isinstance(message, dict) and message.get("refusal")):
            return Cause.REFUSAL
        if not isinstance(message, dict) or finish != "stop" or message.get("tool_calls"):
            return Cause.MALFORMED
        content = message.get("content")
        if not isinstance(content, str):
            return Cause.MALFORMED
        return parse_json(content)

    def member_answer(
        self, merged: Mapping[str, Any], text: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        created = merged.get("created")
        answer: dict[str, Any] = {
            "id": f"chatcmpl-semcache-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": created if isinstance(created, int) else int(time.time()),
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


class MessagesProtocol(Protocol):
    name = "messages"
    SOLO: ClassVar[Mapping[str, str]] = {
        "stream": "stream",
        "tools": "tools",
        "tool_choice": "tools",
        "stop_sequences": "stop",
        "thinking": "thinking",  # a forced tool call cannot think first
    }

    def member(self, body: Mapping[str, Any]) -> Member | str:
        reason = _solo(body, self.SOLO)
        if reason is not None:
            return reason
        messages = body.get("messages")
        if not isinstance(messages, list) or len(messages) != 1:
            return "conversation"
        last = messages[0]
        if (
            not isinstance(last, dict)
            or last.get("role") != "user"
            or set(last) - {"role", "content"}
        ):
            return "conversation"
        prompt = message_text(last.get("content"))
        if prompt is None or not prompt.strip():
            return "content"
        rest = {k: v for k, v in body.items() if k != "messages"}
        return Member(
            group=group_of(body.get("system"), rest),
            prompt=prompt,
            body=body,
            limit=_positive(body.get("max_tokens")),
        )

    def merged_request(self, members: Sequence[Member], ids: Sequence[str]) -> dict[str, Any]:
        first = members[0].body
        body = {k: v for k, v in first.items() if k != "messages"}
        system = first.get("system")
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system or []
        body["system"] = [*blocks, {"type": "text", "text": INSTRUCTIONS}]
        body["messages"] = [{"role": "user", "content": items_json(members, ids)}]
        body["tools"] = [
            {
                "name": SCHEMA_NAME,
                "description": "Record the answer to every item, in order.",
                "input_schema": schema(ids),
            }
        ]
        body["tool_choice"] = {"type": "tool", "name": SCHEMA_NAME}
        limit = merged_limit(members)
        if limit is not None:
            body["max_tokens"] = limit
        return body

    def payload(self, answer: object) -> object:
        if not isinstance(answer, dict):
            return Cause.UPSTREAM_ERROR
        stop = answer.get("stop_reason")
        if stop == "max_tokens":
            return Cause.TRUNCATED
        if stop == "refusal":
            return Cause.REFUSAL
        content = answer.get("content")
        calls = [
            block
            for block in (content if isinstance(content, list) else [])
            if isinstance(block, dict) and block.get("type") == "tool_use"
        ]
        if stop != "tool_use" or len(calls) != 1 or calls[0].get("name") != SCHEMA_NAME:
            return Cause.MALFORMED
        return calls[0].get("input")

    def member_answer(
        self, merged: Mapping[str, Any], text: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        return {
            "id": f"msg_semcache_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": merged.get("model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (ChatProtocol(), MessagesProtocol())}
