"""From a request to the keys it is stored under: its scope and its exact-match key.

A scope is a namespace (the tenant) plus a fingerprint of everything besides the prompt that
changes the answer: model, system prompt, tools, sampling parameters, prior turns. Two requests
can only ever share an entry when their scopes are equal, so the fingerprint errs towards
including a field rather than leaving it out.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import sys
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from semcache.config import check_confidence, check_similarity, check_ttl
from semcache.errors import InvalidRequestError

DEFAULT_NAMESPACE = "default"
MAX_NAMESPACE_LENGTH = 256  # what a caller may name (X-Semcache-Namespace, a client's name)
# A stored namespace may be a tenant and a caller's namespace under it: "<tenant>/<namespace>".
MAX_SCOPED_NAMESPACE_LENGTH = 2 * MAX_NAMESPACE_LENGTH + 1

_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCTUATION = " ?!.。？！"  # after whitespace is one space
_CUT = re.compile(r"[^\W_]\s")  # a letter or digit, then whitespace: the piece ends after it


@dataclass(frozen=True)
class Scope:
    """Where an entry lives: only lookups with the same scope can see it."""

    namespace: str
    fingerprint: str

    @property
    def key(self) -> str:
        return f"{self.namespace}\x1f{self.fingerprint}"


@dataclass(frozen=True, kw_only=True)
class CacheRequest:
    """A prompt with everything that decides which entries may answer it.

    Attributes:
        prompt: the text that is embedded and compared (for chat, the last user message).
        namespace: the tenant; entries never cross namespaces.
        context: JSON-compatible values that change the answer besides the prompt (model,
            system prompt, tools, sampling parameters, prior turns). Hashed into the scope.
        min_similarity: overrides the cache's threshold for this lookup.
        min_confidence: overrides the probability the verifier must give for this lookup.
        ttl_s: overrides the cache's default lifetime for an entry stored from this request.

    Raises:
        InvalidRequestError: on construction, when a field is empty, of the wrong type or out
            of range.
    """

    prompt: str
    namespace: str = DEFAULT_NAMESPACE
    context: Mapping[str, Any] = field(default_factory=dict)
    min_similarity: float | None = None
    ttl_s: float | None = None
    min_confidence: float | None = None
    scope: Scope = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        check_namespace(self.namespace, limit=MAX_SCOPED_NAMESPACE_LENGTH)
        if not isinstance(self.context, Mapping):
            raise InvalidRequestError(
                f"context must be a mapping, got {type(self.context).__name__}", field="context"
            )
        if self.min_similarity is not None:
            check_similarity(self.min_similarity, "min_similarity", InvalidRequestError)
        if self.ttl_s is not None:
            check_ttl(self.ttl_s, "ttl_s", InvalidRequestError)
        if self.min_confidence is not None:
            check_confidence(self.min_confidence, "min_confidence", InvalidRequestError)
        # Fail at construction, not at the first lookup, when the context cannot be hashed.
        object.__setattr__(self, "scope", Scope(self.namespace, fingerprint(self.context)))

    @functools.cached_property
    def exact_key(self) -> str:
        """The exact tier's key (computed once: every stage of a request asks for it)."""
        return exact_key(self.scope, self.prompt)


def check_prompt(prompt: object, name: str = "prompt") -> str:
    """Raises InvalidRequestError unless ``prompt`` is a string with some non-space text."""
    if not isinstance(prompt, str):
        raise InvalidRequestError(
            f"{name} must be a string, got {type(prompt).__name__}", field=name
        )
    if not prompt.strip():
        raise InvalidRequestError(f"{name} must not be empty", field=name)
    return prompt


def check_namespace(namespace: object, *, limit: int = MAX_NAMESPACE_LENGTH) -> str:
    """Raises InvalidRequestError unless ``namespace`` is a printable string of at most
    ``limit`` characters."""
    if not isinstance(namespace, str) or not namespace:
        raise InvalidRequestError(
            f"namespace must be a non-empty string, got {namespace!r}", field="namespace"
        )
    if len(namespace) > limit or not namespace.isprintable():
        raise InvalidRequestError(
            f"namespace must be at most {limit} printable characters",
            field="namespace",
        )
    return namespace


def fingerprint(context: Mapping[str, Any]) -> str:
    """A stable hash of ``context``: key order and ``1`` against ``1.0`` do not matter.

    Raises:
        InvalidRequestError: ``context`` holds values that are not JSON (sets, objects, NaN).
    """
    try:
        canonical = orjson.dumps(_canonical(context), option=orjson.OPT_SORT_KEYS)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(
            f"context must be JSON-compatible: {exc}", field="context"
        ) from exc
    return hashlib.sha256(canonical).hexdigest()[:32]


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def normalize_prompt(prompt: str, chunk: int = 65536) -> str:
    """The form two prompts share when they differ only in case, spacing (any run of
    whitespace is one space), invisible format characters, Unicode width or trailing
    punctuation: what the exact tier compares.

    A long prompt is read in pieces of about ``chunk`` characters, each cut where a run of
    whitespace starts after a letter or digit (no step here joins anything across such a
    cut). Each step is one call into C that holds the interpreter: over megabytes at once it
    held every other request for a fifth of a second."""
    parts = []
    for piece in _pieces(prompt, chunk):
        text = unicodedata.normalize("NFKC", piece).casefold()
        # Zero-width and other format characters are invisible: "a\u200bb" reads as "ab".
        if not text.isascii():  # none is ASCII
            text = _format_characters().sub("", text)
        parts.append(_WHITESPACE.sub(" ", text))
    text = "".join(parts).strip()
    return text.rstrip(_TRAILING_PUNCTUATION) or text


def _pieces(text: str, size: int) -> Iterator[str]:
    start = 0
    while len(text) - start > size:
        cut = _CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start() + 1]
        start = cut.start() + 1
    yield text[start:]


@functools.cache
def _format_characters() -> re.Pattern[str]:
    """Every format character (Unicode category Cf), as one character class: removed in one
    pass of the regular expression engine, not a Python call per character (a prompt of
    megabytes took a second that way, on the event loop)."""
    ranges: list[list[int]] = []  # as ranges: a class of single characters is far slower
    for c in range(sys.maxunicode + 1):
        if unicodedata.category(chr(c)) == "Cf":
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    spans = (re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)
    return re.compile("[" + "".join(spans) + "]")


def exact_key(scope: Scope, prompt: str) -> str:
    """Hash of scope and normalised prompt, looked up before any embedding is computed."""
    digest = hashlib.sha256()
    digest.update(scope.key.encode())
    digest.update(b"\x00")
    digest.update(normalize_prompt(prompt).encode())
    return digest.hexdigest()
