"""Settings of the sidecar, declared once: name, default and help feed the CLI flags, the
``SEMCACHE_*`` environment variables, the TOML file and the README's table.

Precedence: command line > environment > ``--config`` file > defaults. Every value is checked
when the server starts, and a bad one stops it with a message naming the setting, where it came
from and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcache.config import DEFAULT_MIN_SIMILARITY, CacheConfig
from semcache.errors import ConfigError

ENV_PREFIX = "SEMCACHE_"


def setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "port to listen on")
    upstream: str = setting("https://api.openai.com/v1", "base URL of the OpenAI-compatible API")
    cache_dir: Path = setting(Path("semcache-data"), "directory of the embedded cache")
    min_similarity: float = setting(
        DEFAULT_MIN_SIMILARITY, "cosine similarity a cached answer needs, in (0, 1]"
    )
    ttl_s: float | None = setting(None, "lifetime of a cached answer in seconds (none: no limit)")
    max_entries: int | None = setting(None, "bound on cached answers, least recently used evicted")
    max_bytes: int | None = setting(None, "bound on the size of cached answers in bytes")
    model: str | None = setting(None, "embedding model name or path (see models/README.md)")
    max_body_bytes: int = setting(4 * 1024 * 1024, "largest request body accepted, in bytes")
    upstream_timeout_s: float = setting(
        600.0, "longest wait for the upstream's answer, or between two streamed chunks"
    )
    upstream_connect_timeout_s: float = setting(10.0, "longest wait to connect to the upstream")
    batch_max_wait_ms: float = setting(
        3.0, "how long a lookup waits for others to share its embedding batch (0: no batching)"
    )
    batch_max_size: int = setting(32, "lookups per embedding batch at most")
    checkpoint_interval_s: float = setting(
        300.0, "how often the index snapshot is saved when the cache changed (0: only at exit)"
    )
    admin_token: str | None = setting(
        None, "bearer token of the /admin API (unset: the admin API is off)"
    )
    log_level: str = setting("info", "debug, info, warning or error")

    def __post_init__(self) -> None:
        positive = ("port", "max_body_bytes", "batch_max_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.port > 65535:
            raise ConfigError(f"port must be at most 65535, got {self.port}")
        for name in ("upstream_timeout_s", "upstream_connect_timeout_s"):
            value = getattr(self, name)
            if not (0 < value < math.inf):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not (0 <= self.checkpoint_interval_s < math.inf):
            raise ConfigError(
                f"checkpoint_interval_s must be 0 or a number of seconds, got "
                f"{self.checkpoint_interval_s!r}"
            )
        if not (0 <= self.batch_max_wait_ms <= 1000):
            raise ConfigError(
                f"batch_max_wait_ms must be between 0 and 1000, got {self.batch_max_wait_ms!r}"
            )
        if not self.upstream.startswith(("http://", "https://")):
            raise ConfigError(f"upstream must be an http:// or https:// URL, got {self.upstream!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log_level must be debug, info, warning or error, got {self.log_level!r}"
            )
        self.cache_config()  # the cache's own checks, reported now rather than at first use

    def cache_config(self) -> CacheConfig:
        return CacheConfig(
            min_similarity=self.min_similarity,
            ttl_s=self.ttl_s,
            max_entries=self.max_entries,
            max_bytes=self.max_bytes,
            model=self.model,
        )


@dataclass(frozen=True)
class SettingInfo:
    name: str
    default: Any
    help: str
    kind: type
    optional: bool

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings() -> list[SettingInfo]:
    hints = typing.get_type_hints(ServerConfig)
    infos = []
    for f in dataclasses.fields(ServerConfig):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        kind = next(a for a in args if a is not type(None)) if optional else hint
        infos.append(SettingInfo(f.name, f.default, f.metadata["help"], kind, optional))
    return infos


def _convert(info: SettingInfo, value: Any, source: str) -> Any:
    """Turn a value from a flag, a variable or the file into the setting's type."""
    if value is None or (
        isinstance(value, str) and info.optional and value.lower() in ("", "none")
    ):
        if info.optional:
            return None
        raise ConfigError(f"{info.name} (from {source}) needs a value")
    try:
        if info.kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if info.kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if info.kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if info.kind is Path:
            return Path(str(value)).expanduser()
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        kind = info.kind.__name__ + (" or none" if info.optional else "")
        raise ConfigError(f"{info.name} (from {source}) must be a {kind}, got {value!r}") from None


def load_config(
    cli: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> ServerConfig:
    """Merge the sources into a checked :class:`ServerConfig`.

    ``cli`` maps setting names to values given on the command line (absent or None: not given).

    Raises:
        ConfigError: a file that cannot be read, an unknown key, or a bad value.
    """
    environ = os.environ if environ is None else environ
    infos = {info.name: info for info in settings()}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the config file {config_file}: {exc}") from exc
        table = data.get("semcache", data)
        for key, value in table.items():
            if isinstance(value, dict):
                continue  # sections belong to other parts (for example [[upstreams]])
            if key not in infos:
                raise ConfigError(
                    f"unknown setting {key!r} in {config_file}; known settings: {', '.join(infos)}"
                )
            values[key] = _convert(infos[key], value, str(config_file))
    for info in infos.values():
        if info.env in environ:
            values[info.name] = _convert(info, environ[info.env], info.env)
    for name, value in (cli or {}).items():
        if value is not None:
            values[name] = _convert(infos[name], value, infos[name].flag)
    return ServerConfig(**values)


def markdown_table() -> str:
    """The settings as the README documents them (a test keeps the two equal)."""
    rows = ["| setting | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for info in settings():
        default = "none" if info.default is None else info.default
        rows.append(f"| `{info.name}` | `{info.flag}` | `{info.env}` | {default} | {info.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
