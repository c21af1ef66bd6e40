"""Per-request controls carried in headers, and the tenant a request belongs to."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from semcache.compression import Mode
from semcache.config import check_confidence, check_similarity, check_ttl
from semcache.errors import InvalidRequestError
from semcache.keys import check_namespace
from semcache.upstream.router import PRIORITIES


@dataclass(frozen=True)
class Controls:
    no_cache: bool = False  # skip the lookup, still store the answer
    no_store: bool = False  # do not store the answer
    min_similarity: float | None = None
    min_confidence: float | None = None
    ttl_s: float | None = None
    namespace: str | None = None
    batch: bool | None = None  # X-Semcache-Batch: allow (True), deny (False), absent (None)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Controls:
        """Raises InvalidRequestError naming the header whose value is bad."""
        directives = {
            part.strip().lower() for part in headers.get("Cache-Control", "").split(",") if part
        }
        return cls(
            no_cache="no-cache" in directives,
            no_store="no-store" in directives,
            min_similarity=_number(headers, "X-Semcache-Min-Similarity", check_similarity),
            min_confidence=_number(headers, "X-Semcache-Min-Confidence", check_confidence),
            ttl_s=_number(headers, "X-Semcache-TTL", check_ttl),
            namespace=_namespace(headers),
            batch=_batch(headers),
        )


def _batch(headers: Mapping[str, str]) -> bool | None:
    raw = headers.get("X-Semcache-Batch")
    if raw is None:
        return None
    value = raw.strip().lower()
    if value not in ("allow", "deny"):
        raise InvalidRequestError(
            f"X-Semcache-Batch must be allow or deny, got {raw!r}", field="X-Semcache-Batch"
        )
    return value == "allow"


def _number(headers: Mapping[str, str], name: str, check: object) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
        return check(value, name, InvalidRequestError)  # type: ignore[operator, no-any-return]
    except (ValueError, InvalidRequestError) as exc:
        message = str(exc) if isinstance(exc, InvalidRequestError) else f"{name} must be a number"
        raise InvalidRequestError(message, field=name) from None


def _namespace(headers: Mapping[str, str]) -> str | None:
    raw = headers.get("X-Semcache-Namespace")
    if raw is None:
        return None
    try:
        return check_namespace(raw)
    except InvalidRequestError as exc:
        raise InvalidRequestError(str(exc), field="X-Semcache-Namespace") from None


# Headers that carry a caller's credentials: OpenAI's and Anthropic's (and anything else sent
# as Authorization, whatever its scheme), and Azure OpenAI's.
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
ANONYMOUS = "anonymous"


def caller_key(headers: Mapping[str, str]) -> str | None:
    """The key a caller presents: a bearer token (any case, any spacing), else ``api-key``
    (Azure OpenAI), else ``x-api-key`` (Anthropic)."""
    scheme, *rest = headers.get("Authorization", "").split(None, 1) or [""]
    if scheme.lower() == "bearer" and rest and rest[0].strip():
        return rest[0].strip()
    return headers.get("api-key") or headers.get("x-api-key") or None


def credentials(headers: Mapping[str, str]) -> str | None:
    """Everything a caller sent as credentials, in one canonical string; ``None`` when it sent
    none. A plain bearer token or ``api-key`` stands for itself; any other scheme or header is
    kept whole with its name, so ``Basic`` users, ``Token`` users and ``x-api-key`` users each
    have credentials of their own."""
    multi = headers if isinstance(headers, CIMultiDictProxy | CIMultiDict) else CIMultiDict(headers)
    present = [
        (name, value)
        for name in CREDENTIAL_HEADERS
        for value in multi.getall(name, [])
        if value.strip()
    ]
    if not present:
        return None
    key = caller_key(multi)
    if len(present) == 1 and key is not None and present[0][0] != "x-api-key":
        return key  # the tenant of a plain OpenAI or Azure key, unchanged since 0.1
    return "\n".join(f"{name}:{value}" for name, value in present)


def tenant_of(headers: Mapping[str, str], client: str | None) -> str | None:
    """The tenant a request belongs to: its client's name when the sidecar has ``[[clients]]``
    (see :mod:`semcache.clients`), else a hash of the caller's credentials, so callers with
    different credentials never share an entry or a budget. ``None`` for a caller that sent
    no credentials: it shares entries with nobody, unless the operator opts in
    (``anonymous_cache``)."""
    if client is not None:
        return client
    secret = credentials(headers)
    if secret is None:
        return None
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def tenant_namespace(tenant: str, requested: str | None) -> str:
    """The namespace of a request: its tenant, subdivided by X-Semcache-Namespace, which can
    only narrow a tenant's namespace, never reach another's."""
    return tenant if requested is None else f"{tenant}/{requested}"


DEFERRED = "batch"  # the priority of work that can wait for a provider batch job


def parse_priority(raw: str | None) -> tuple[int, bool]:
    """``X-Semcache-Priority``: high, normal (default), low, or batch (deferred to a provider
    batch job); the queue priority, and whether the request is deferred.

    Raises:
        InvalidRequestError: any other value.
    """
    if raw is None:
        return PRIORITIES["normal"], False
    value = raw.strip().lower()
    if value == DEFERRED:
        return PRIORITIES["low"], True
    try:
        return PRIORITIES[value], False
    except KeyError:
        raise InvalidRequestError(
            f"X-Semcache-Priority must be high, normal, low or batch, got {raw!r}",
            field="X-Semcache-Priority",
        ) from None


def parse_compression(raw: str | None, default: str) -> Mode:
    """``X-Semcache-Compression``: off, window, extractive or summary (default: the setting).

    Raises:
        InvalidRequestError: any other value.
    """
    if raw is None:
        return Mode(default)
    try:
        return Mode(raw.strip().lower())
    except ValueError:
        raise InvalidRequestError(
            "X-Semcache-Compression must be one of "
            + ", ".join(m.value for m in Mode)
            + f", got {raw!r}",
            field="X-Semcache-Compression",
        ) from None
