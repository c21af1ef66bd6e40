"""Per-request controls carried in headers, and the tenant a request belongs to."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from semcache.config import check_confidence, check_similarity, check_ttl
from semcache.errors import InvalidRequestError
from semcache.keys import check_namespace


@dataclass(frozen=True)
class Controls:
    no_cache: bool = False  # skip the lookup, still store the answer
    no_store: bool = False  # do not store the answer
    min_similarity: float | None = None
    min_confidence: float | None = None
    ttl_s: float | None = None
    namespace: str | None = None

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
        )


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


def caller_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("Authorization", "")
    if authorization.lower().startswith("bearer ") and authorization[7:].strip():
        return authorization[7:].strip()
    return headers.get("api-key") or None  # Azure OpenAI's header


def tenant_of(headers: Mapping[str, str], client: str | None) -> str:
    """The tenant a request belongs to: its client's name when the sidecar has ``[[clients]]``
    (see :mod:`semcache.clients`), else a hash of the caller's API key, so callers with
    different keys never share an entry or a budget."""
    if client is not None:
        return client
    key = caller_key(headers)
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "anonymous"


def tenant_namespace(tenant: str, requested: str | None) -> str:
    """The namespace of a request: its tenant, subdivided by X-Semcache-Namespace, which can
    only narrow a tenant's namespace, never reach another's."""
    return tenant if requested is None else f"{tenant}/{requested}"
