"""The callers a sidecar serves: the ``[[clients]]`` tables of the config file.

::

    [[clients]]
    name = "checkout"                    # its tenant: namespace and budget
    api_keys = ["env:CHECKOUT_KEY"]      # what it sends as its key; literal or env:NAME

    [budgets.tenants.checkout]           # a budget of its own (else the per-tenant caps)
    daily_usd = 5.0

Without ``[[clients]]`` any caller is served and its tenant is a hash of the key it sends
(the key is then the provider's, passed through or replaced by a pool key). With them, a
request must carry one of the listed keys, as ``Authorization: Bearer`` or ``api-key``, and
belongs to that client's tenant: its cache namespace, its budget and its metrics. A client's
key is semcache's, never sent upstream, so every upstream then needs its own ``api_keys``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from semcache.errors import ConfigError
from semcache.upstream.specs import resolve_secret

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FIELDS = {"name", "api_keys"}


@dataclass(frozen=True)
class ClientSpec:
    name: str
    keys: tuple[str, ...] = field(repr=False)


def parse_clients(raw: object, environ: Mapping[str, str]) -> tuple[ClientSpec, ...]:
    """Check the ``clients`` array of tables and resolve ``env:NAME`` keys.

    Raises:
        ConfigError: naming the client and the field at fault.
    """
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("clients must be an array of tables ([[clients]])")
    specs = []
    for position, table in enumerate(raw):
        unknown = sorted(set(table) - _FIELDS)
        if unknown:
            raise ConfigError(f"clients[{position}]: unknown field(s) {', '.join(unknown)}")
        name = table.get("name")
        if (
            not isinstance(name, str)
            or not _NAME.fullmatch(name)
            or name.startswith("key-")
            or name == "anonymous"
        ):
            raise ConfigError(
                f"clients[{position}]: name must be 1-64 letters, digits, '.', '_' or '-' "
                f"(not 'anonymous' nor starting with 'key-'), got {name!r}"
            )
        raw_keys = table.get("api_keys")
        if isinstance(raw_keys, str):
            raw_keys = [raw_keys]
        if not isinstance(raw_keys, list) or not raw_keys:
            raise ConfigError(f"client {name!r}: api_keys must be a non-empty list of keys")
        if not all(isinstance(k, str) for k in raw_keys):
            raise ConfigError(f"client {name!r}: api_keys must be strings (literal or env:NAME)")
        keys = tuple(resolve_secret(k, environ, f"client {name!r}") for k in raw_keys)
        specs.append(ClientSpec(name=name, keys=keys))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError("client names must be unique")
    every_key = [k for s in specs for k in s.keys]
    if len(set(every_key)) != len(every_key):
        raise ConfigError("a key may belong to one client only")
    return tuple(specs)


class Clients:
    """Who a key belongs to. Keys are held as SHA-256 digests and compared in constant time."""

    def __init__(self, specs: Sequence[ClientSpec]) -> None:
        self._digests = [(_digest(key), spec.name) for spec in specs for key in spec.keys]

    def identify(self, key: str | None) -> str | None:
        """The name of the client whose key this is, or None."""
        if key is None:
            return None
        digest = _digest(key)
        found = None
        for known, name in self._digests:  # every one, so the time says nothing of the match
            if hmac.compare_digest(known, digest):
                found = name
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
