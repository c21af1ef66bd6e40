"""The ``[[upstreams]]`` tables of the config file: where requests go and with which keys.

::

    [[upstreams]]
    name = "openai"
    kind = "openai"                      # openai | azure | openai-compatible | anthropic
    base_url = "https://api.openai.com/v1"
    api_keys = ["env:OPENAI_KEY_1", "env:OPENAI_KEY_2"]   # literal, or env:NAME
    rpm = 500                            # per key
    tpm = 30000                          # per key
    priority = 0                         # lower is tried first
    weight = 1                           # share among upstreams of the same priority
    models = ["gpt-4o-mini", "gpt-4o"]   # empty or absent: any model

    [[upstreams]]
    name = "azure-east"
    kind = "azure"
    base_url = "https://my-resource.openai.azure.com"
    api_keys = ["env:AZURE_KEY"]
    api_version = "2024-10-21"
    deployments = { "gpt-4o-mini" = "mini-deployment" }   # model -> deployment
    priority = 1

Without any ``[[upstreams]]`` the sidecar forwards to its ``upstream`` URL with each caller's
own key, as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from semcache.errors import ConfigError

KINDS = ("openai", "azure", "openai-compatible", "anthropic")


@dataclass(frozen=True)
class KeySpec:
    id: str  # "<upstream>#<n>": what logs and metrics show, never the secret
    secret: str = field(repr=False)


@dataclass(frozen=True)
class UpstreamSpec:
    name: str
    base_url: str
    kind: str = "openai-compatible"
    keys: tuple[KeySpec, ...] = ()  # empty: the caller's own key passes through
    rpm: float | None = None
    tpm: float | None = None
    priority: int = 0
    weight: float = 1.0
    models: tuple[str, ...] = ()
    deployments: Mapping[str, str] = field(default_factory=dict)
    api_version: str | None = None

    def speaks(self, api: str | None) -> bool:
        """Whether this upstream takes requests of an API ("openai" or "anthropic"; ``None``:
        a path forwarded as it is). An openai-compatible upstream (and the sidecar's own
        ``upstream`` URL) is trusted to take whatever the caller sends."""
        if api is None or self.kind == "openai-compatible":
            return True
        return (self.kind == "anthropic") == (api == "anthropic")

    def serves(self, model: str) -> bool:
        if self.kind == "azure" and self.deployments:
            return model in self.deployments
        return not self.models or model in self.models


def parse_upstreams(raw: object, environ: Mapping[str, str]) -> tuple[UpstreamSpec, ...]:
    """Check the ``upstreams`` array of tables and resolve ``env:NAME`` keys.

    Raises:
        ConfigError: naming the upstream and the field at fault.
    """
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("upstreams must be an array of tables ([[upstreams]])")
    specs = [_parse_one(table, i, environ) for i, table in enumerate(raw)]
    names = [s.name for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"upstream names must be unique; repeated: {', '.join(duplicated)}")
    return tuple(specs)


_FIELDS = {
    "name", "base_url", "kind", "api_keys", "rpm", "tpm", "priority", "weight", "models",
    "deployments", "api_version",
}  # fmt: skip


def _parse_one(table: dict[str, Any], position: int, environ: Mapping[str, str]) -> UpstreamSpec:
    where = f"upstreams[{position}]"
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    name = table.get("name")
    if not isinstance(name, str) or not name or "#" in name:
        raise ConfigError(f"{where}: name must be a non-empty string without '#'")
    where = f"upstream {name!r}"
    base_url = table.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: base_url must be an http:// or https:// URL")
    kind = table.get("kind", "openai-compatible")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    raw_keys = table.get("api_keys", [])
    if isinstance(raw_keys, str):
        raw_keys = [raw_keys]
    if not isinstance(raw_keys, list) or not all(isinstance(k, str) for k in raw_keys):
        raise ConfigError(f"{where}: api_keys must be a list of strings (literal or env:NAME)")
    keys = tuple(
        KeySpec(id=f"{name}#{i}", secret=resolve_secret(k, environ, where))
        for i, k in enumerate(raw_keys)
    )
    rpm = _limit(table.get("rpm"), f"{where}: rpm")
    tpm = _limit(table.get("tpm"), f"{where}: tpm")
    if (rpm is not None or tpm is not None) and not keys:
        raise ConfigError(f"{where}: rpm and tpm are per key, so the upstream needs api_keys")
    priority = table.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigError(f"{where}: priority must be an integer (lower is tried first)")
    weight = table.get("weight", 1.0)
    if not _positive_number(weight):
        raise ConfigError(f"{where}: weight must be a positive number")
    models = table.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{where}: models must be a list of model names")
    deployments = table.get("deployments", {})
    if not isinstance(deployments, dict) or not all(
        isinstance(v, str) and v for v in deployments.values()
    ):
        raise ConfigError(f"{where}: deployments must map model names to deployment names")
    api_version = table.get("api_version")
    if kind == "azure":
        if not isinstance(api_version, str) or not api_version:
            raise ConfigError(f"{where}: an azure upstream needs api_version (e.g. 2024-10-21)")
        if not deployments:
            raise ConfigError(f"{where}: an azure upstream needs deployments (model = name)")
    elif deployments or api_version is not None:
        raise ConfigError(f"{where}: deployments and api_version are for kind = 'azure' only")
    return UpstreamSpec(
        name=name,
        base_url=base_url.rstrip("/"),
        kind=kind,
        keys=keys,
        rpm=rpm,
        tpm=tpm,
        priority=priority,
        weight=float(weight),
        models=tuple(models),
        deployments=dict(deployments),
        api_version=api_version,
    )


def resolve_secret(raw: str, environ: Mapping[str, str], where: str) -> str:
    """A key as written in the config file: literal, or ``env:NAME`` read from ``environ``.

    Raises:
        ConfigError: the key is empty or its variable unset (``where`` says whose it is).
    """
    if raw.startswith("env:"):
        variable = raw[4:]
        value = environ.get(variable, "").strip()
        if not value:
            raise ConfigError(f"{where}: the environment variable {variable} is not set")
        return value
    if not raw.strip():
        raise ConfigError(f"{where}: an api key is empty")
    return raw.strip()


def _positive_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _limit(value: object, name: str) -> float | None:
    if value is None:
        return None
    if not _positive_number(value):
        raise ConfigError(f"{name} must be a positive number per minute")
    return float(value)  # type: ignore[arg-type]


def passthrough(base_url: str) -> tuple[UpstreamSpec, ...]:
    """The one upstream of a sidecar without ``[[upstreams]]``: callers' keys, no limits."""
    return (UpstreamSpec(name="default", base_url=base_url.rstrip("/")),)


def describe(specs: Sequence[UpstreamSpec]) -> list[dict[str, Any]]:
    """What ``/stats`` shows of the upstreams (no secrets)."""
    return [
        {
            "name": s.name,
            "kind": s.kind,
            "base_url": s.base_url,
            "keys": [k.id for k in s.keys] or "caller's own",
            "rpm": s.rpm,
            "tpm": s.tpm,
            "priority": s.priority,
            "weight": s.weight,
            "models": list(s.models) or "any",
        }
        for s in specs
    ]


def model_of_deployment(upstreams: Sequence[UpstreamSpec], deployment: str) -> str:
    """The model an Azure OpenAI client asks for by naming a deployment in its path
    (``/openai/deployments/{deployment}/...``, with no model in the body): the model that an
    azure upstream maps to that deployment, else the deployment's own name (deployments are
    often named after their model)."""
    for spec in upstreams:
        for model, name in spec.deployments.items():
            if name == deployment:
                return model
    return deployment
