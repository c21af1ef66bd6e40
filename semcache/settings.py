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

from semcache.budgets import BudgetConfig, parse_budgets
from semcache.clients import ClientSpec, parse_clients
from semcache.compression import CompressionSettings, Mode
from semcache.config import CacheConfig, check_confidence, check_similarity, option
from semcache.errors import ConfigError
from semcache.pricing import PriceTable
from semcache.shared.link import RedisLink, check_url
from semcache.upstream.router import RoutingPolicy
from semcache.upstream.specs import UpstreamSpec, parse_upstreams

ENV_PREFIX = "SEMCACHE_"
# Settings that changed name, still read from the file and the environment under the old one
# ("batch" now means merging requests, see ``batch_*``).
RENAMED = {
    "batch_max_wait_ms": "lookup_batch_wait_ms",
    "batch_max_size": "lookup_batch_size",
}
COMPRESSION_MODES = tuple(mode.value for mode in Mode)
HISTORY_MATCHES = ("exact", "meaning")


setting = option


@dataclass(frozen=True, kw_only=True)
class ServerConfig(CacheConfig):
    """The sidecar's settings: the cache's options (declared in :class:`CacheConfig`) and the
    sidecar's own."""

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "port to listen on")
    upstream: str = setting("https://api.openai.com/v1", "base URL of the OpenAI-compatible API")
    cache_dir: Path = setting(Path("semcache-data"), "directory of the embedded cache")
    shadow_fraction: float = setting(
        0.0, "share of hits also sent upstream to measure the false-hit rate, in [0, 1]"
    )
    shadow_agreement: float = setting(
        0.75, "similarity of the two answers above which a shadowed hit counts as right"
    )
    max_body_bytes: int = setting(
        32 * 1024 * 1024,
        "largest request body accepted, in bytes (the providers take images and documents "
        "inline, Anthropic up to 32 MB)",
    )
    upstream_timeout_s: float = setting(
        600.0, "longest wait for the upstream's answer, or between two streamed chunks"
    )
    upstream_connect_timeout_s: float = setting(10.0, "longest wait to connect to the upstream")
    lookup_batch_wait_ms: float = setting(
        3.0,
        "how long a lookup waits for others to share its embedding batch while one is running "
        "(an idle cache never waits; 0: no batching)",
    )
    lookup_batch_size: int = setting(32, "lookups per embedding batch at most")
    lookup_busy_wait_ms: float | None = setting(
        None,
        "a miss skips the semantic tier when the model's backlog would hold it longer than "
        "this while recent lookups hit less than lookup_busy_hit_rate (none: always wait)",
    )
    lookup_busy_hit_rate: float = setting(
        0.05, "recent share of hits under which a busy model is not waited for"
    )
    checkpoint_interval_s: float = setting(
        300.0, "how often the index snapshot is saved when the cache changed (0: only at exit)"
    )
    max_retries: int = setting(3, "retries of a request after a 429, a 5xx or a network error")
    retry_backoff_s: float = setting(
        0.5, "first backoff before a retry, doubled each time, with jitter"
    )
    retry_backoff_max_s: float = setting(20.0, "longest backoff before a retry")
    breaker_failures: int = setting(5, "failures in a row that open an upstream's breaker")
    breaker_reset_s: float = setting(30.0, "how long an open breaker waits before a probe")
    health_check_interval_s: float = setting(
        60.0,
        "how often each upstream is probed (GET /v1/models); failing ones leave the rotation "
        "until they answer (0: no probes)",
    )
    health_check_timeout_s: float = setting(10.0, "longest wait for a health check's answer")
    status_interval_s: float = setting(
        10.0, "how often the status page (/dashboard) takes a point of the last hour"
    )
    queue_max_wait_s: float = setting(
        30.0, "longest wait for a free upstream key before a 429 with Retry-After"
    )
    queue_max_length: int = setting(1000, "requests waiting for a key at most, then 429")
    degraded_min_similarity: float | None = setting(
        None,
        "under backlog, serve cached answers down to this similarity, saying so in "
        "X-Semcache-Degraded (none: off)",
    )
    degraded_min_confidence: float | None = setting(
        None, "under backlog, the verifier probability that suffices (none: the usual one)"
    )
    anonymous_cache: bool = setting(
        False,
        "cache requests that carry no credentials, all in one shared tenant (off: they bypass "
        "the cache)",
    )
    body_read_timeout_s: float = setting(
        30.0, "longest time a client may take to send its request body, then 408"
    )
    max_pending_bodies: int = setting(
        64, "large request bodies (over 64 KiB) read at once at most; others wait their turn"
    )
    history_match: str = setting(
        "exact",
        "how a follow-up's earlier user turns must match a cached conversation's: exact (byte "
        "for byte) or meaning (each turn a hit on the other's, as a served hit must be; the "
        "assistant's turns always verbatim)",
    )
    history_match_turns: int = setting(
        4, "history_match meaning: conversations with more earlier user turns match exactly"
    )
    compression: str = setting(
        "off",
        "context compression of long chat histories: off, window, extractive or summary "
        "(per request: X-Semcache-Compression)",
    )
    compression_min_tokens: int = setting(
        1024, "chat histories of at most this many tokens are sent as they are"
    )
    compression_budget_tokens: int = setting(
        4096, "a compressed history loses its oldest blocks until it fits this many tokens"
    )
    compression_keep_turns: int = setting(
        2, "the last turns sent verbatim, the current user message counting as one"
    )
    compression_block_tokens: int = setting(
        768,
        "the history is compressed in blocks of this many tokens, closed at turn starts, so "
        "that consecutive requests share a prefix for the provider's prompt cache",
    )
    compression_recall_tokens: int = setting(
        256, "tokens of left-out text that the last message refers to, put back at most"
    )
    compression_model: str = setting(
        "gpt-4o-mini", "the cheaper model that writes summaries in the summary mode"
    )
    compression_summary_timeout_s: float = setting(
        20.0, "longest wait for a summary; then the block is compressed extractively"
    )
    batch_window_ms: float = setting(
        50.0,
        "how long a batchable miss waits for others to share one upstream call "
        "(X-Semcache-Batch: allow)",
    )
    batch_max_items: int = setting(8, "requests merged into one upstream call at most")
    batch_models: str = setting(
        "",
        "models whose batchable requests are merged without asking, comma-separated (*: all; "
        "X-Semcache-Batch: deny opts a request out)",
    )
    batch_namespaces: str = setting(
        "", "X-Semcache-Namespace values whose batchable requests are merged without asking"
    )
    batch_across_tenants: bool = setting(
        False,
        "merge requests of different tenants into one call (only with pool keys; each item "
        "is then read by the model beside other tenants' text)",
    )
    batch_jobs_window_s: float = setting(
        10.0,
        "how long requests marked X-Semcache-Priority: batch are collected before they go as "
        "one provider batch job",
    )
    batch_jobs_max_items: int = setting(
        1000, "requests in one provider batch job at most (OpenAI allows 50,000)"
    )
    batch_jobs_poll_s: float = setting(
        60.0, "how often an unfinished provider batch job is checked"
    )
    redis: str | None = setting(
        None,
        "redis://host:port/db (rediss:// for TLS) shared by several sidecars: one budget for "
        "all (unset: everything stays on this machine)",
    )
    redis_password: str | None = setting(
        None, "the Redis password, or env:NAME to read it from a variable (else: from the URL)"
    )
    redis_fallback_share: float = setting(
        0.5,
        "while Redis is away, each sidecar keeps to this share of a key's limits (1/N for N "
        "sidecars keeps their sum under the limit)",
    )
    redis_timeout_s: float = setting(
        0.25, "longest wait for Redis; past it the sidecar goes on with its local stand-ins"
    )
    admin_token: str | None = setting(
        None, "bearer token of the /admin API (unset: the admin API is off)"
    )
    log_level: str = setting("info", "debug, info, warning or error")
    # Sections of the config file, not settings: [[upstreams]], [[clients]], [budgets], [prices].
    upstreams: tuple[UpstreamSpec, ...] = field(default=(), metadata={"section": True})
    clients: tuple[ClientSpec, ...] = field(default=(), metadata={"section": True})
    budgets: BudgetConfig | None = field(default=None, metadata={"section": True})
    prices: PriceTable = field(default_factory=PriceTable, metadata={"section": True})

    def __post_init__(self) -> None:
        positive = (
            "port",
            "max_body_bytes",
            "lookup_batch_size",
            "batch_max_items",
            "batch_jobs_max_items",
            "breaker_failures",
            "max_pending_bodies",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.port > 65535:
            raise ConfigError(f"port must be at most 65535, got {self.port}")
        if self.compression not in COMPRESSION_MODES:
            raise ConfigError(
                f"compression must be one of {', '.join(COMPRESSION_MODES)}, "
                f"got {self.compression!r}"
            )
        try:
            self.compression_settings()
        except ValueError as exc:
            raise ConfigError(f"compression_{exc}") from None
        if self.max_retries < 0 or self.queue_max_length < 0:
            raise ConfigError("max_retries and queue_max_length must not be negative")
        for name in (
            "upstream_timeout_s",
            "upstream_connect_timeout_s",
            "retry_backoff_s",
            "retry_backoff_max_s",
            "breaker_reset_s",
            "health_check_timeout_s",
            "status_interval_s",
            "queue_max_wait_s",
            "body_read_timeout_s",
            "batch_jobs_window_s",
            "batch_jobs_poll_s",
            "redis_timeout_s",
        ):
            value = getattr(self, name)
            if not (0 < value < math.inf):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not (0 <= self.health_check_interval_s < math.inf):
            raise ConfigError(
                f"health_check_interval_s must be 0 or a number of seconds, got "
                f"{self.health_check_interval_s!r}"
            )
        if not (0 <= self.checkpoint_interval_s < math.inf):
            raise ConfigError(
                f"checkpoint_interval_s must be 0 or a number of seconds, got "
                f"{self.checkpoint_interval_s!r}"
            )
        if self.lookup_busy_wait_ms is not None and not (0 < self.lookup_busy_wait_ms < math.inf):
            raise ConfigError(
                f"lookup_busy_wait_ms must be a positive number of milliseconds or none, got "
                f"{self.lookup_busy_wait_ms!r}"
            )
        if not (0 <= self.lookup_busy_hit_rate <= 1):
            raise ConfigError(
                f"lookup_busy_hit_rate must be between 0 and 1, got {self.lookup_busy_hit_rate!r}"
            )
        if not (0 <= self.lookup_batch_wait_ms <= 1000):
            raise ConfigError(
                "lookup_batch_wait_ms must be between 0 and 1000, got "
                f"{self.lookup_batch_wait_ms!r}"
            )
        if not (0 <= self.batch_window_ms <= 10_000):
            raise ConfigError(
                f"batch_window_ms must be between 0 and 10000, got {self.batch_window_ms!r}"
            )
        if self.redis is not None:
            check_url(self.redis)
        if not (0 < self.redis_fallback_share <= 1):
            raise ConfigError(
                f"redis_fallback_share must be in (0, 1], got {self.redis_fallback_share!r}"
            )
        if not self.upstream.startswith(("http://", "https://")):
            raise ConfigError(f"upstream must be an http:// or https:// URL, got {self.upstream!r}")
        if self.history_match not in HISTORY_MATCHES:
            raise ConfigError(f"history_match must be exact or meaning, got {self.history_match!r}")
        if self.history_match_turns < 1:
            raise ConfigError(
                f"history_match_turns must be at least 1, got {self.history_match_turns!r}"
            )
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log_level must be debug, info, warning or error, got {self.log_level!r}"
            )
        if self.degraded_min_similarity is not None:
            check_similarity(self.degraded_min_similarity, "degraded_min_similarity")
        if self.degraded_min_confidence is not None:
            check_confidence(self.degraded_min_confidence, "degraded_min_confidence")
        for name in ("shadow_fraction", "shadow_agreement"):
            if not (0 <= getattr(self, name) <= 1):
                raise ConfigError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.clients and (not self.upstreams or not all(u.keys for u in self.upstreams)):
            raise ConfigError(
                "[[clients]] keys are semcache's own and are never sent upstream, so every "
                "upstream needs its api_keys ([[upstreams]])"
            )
        if self.budgets is not None and self.budgets.lines:
            named = {client.name for client in self.clients}
            for line in self.budgets.lines:
                unknown = sorted(line.clients - named)
                if unknown:
                    raise ConfigError(
                        f"budgets.lines.{line.name}: {', '.join(unknown)} "
                        "not among the [[clients]] (a business line groups named clients)"
                    )
        super().__post_init__()  # the cache's own checks, reported now rather than at first use

    def routing_policy(self) -> RoutingPolicy:
        return RoutingPolicy(
            max_retries=self.max_retries,
            backoff_base_s=self.retry_backoff_s,
            backoff_max_s=self.retry_backoff_max_s,
            breaker_failures=self.breaker_failures,
            breaker_reset_s=self.breaker_reset_s,
            queue_max_wait_s=self.queue_max_wait_s,
            queue_max_length=self.queue_max_length,
        )

    def compression_settings(self) -> CompressionSettings:
        return CompressionSettings(
            min_tokens=self.compression_min_tokens,
            budget_tokens=self.compression_budget_tokens,
            keep_turns=self.compression_keep_turns,
            block_tokens=self.compression_block_tokens,
            recall_tokens=self.compression_recall_tokens,
            summary_model=self.compression_model,
            summary_timeout_s=self.compression_summary_timeout_s,
        )

    def redis_link(self) -> RedisLink | None:
        """A link to ``redis`` (``None`` without one)."""
        if self.redis is None:
            return None
        return RedisLink(self.redis, password=self.redis_password, timeout_s=self.redis_timeout_s)

    def batched_models(self) -> frozenset[str]:
        return _names(self.batch_models)

    def batched_namespaces(self) -> frozenset[str]:
        return _names(self.batch_namespaces)

    def cache_config(self) -> CacheConfig:
        """The cache's options, as the library takes them."""
        return CacheConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(CacheConfig)}
        )


def _names(listed: str) -> frozenset[str]:
    return frozenset(name.strip() for name in listed.split(",") if name.strip())


@dataclass(frozen=True)
class SettingInfo:
    name: str
    default: Any
    help: str
    value_type: type
    optional: bool

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings() -> list[SettingInfo]:
    """Every setting: the sidecar's own first, then the cache's options."""
    hints = typing.get_type_hints(ServerConfig)
    cache = {f.name for f in dataclasses.fields(CacheConfig)}
    ordered = sorted(dataclasses.fields(ServerConfig), key=lambda f: f.name in cache)
    infos = []
    for f in ordered:
        if f.metadata.get("section"):
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        value_type = next(a for a in args if a is not type(None)) if optional else hint
        infos.append(SettingInfo(f.name, f.default, f.metadata["help"], value_type, optional))
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
        if info.value_type is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if info.value_type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if info.value_type is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if info.value_type is Path:
            return Path(str(value)).expanduser()
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        expected = info.value_type.__name__ + (" or none" if info.optional else "")
        raise ConfigError(
            f"{info.name} (from {source}) must be a {expected}, got {value!r}"
        ) from None


_SECTIONS = ("upstreams", "clients", "budgets", "prices")


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
        sections = {**data, **table}
        if "upstreams" in sections:
            values["upstreams"] = parse_upstreams(sections["upstreams"], environ)
        if "clients" in sections:
            values["clients"] = parse_clients(sections["clients"], environ)
        if "budgets" in sections:
            values["budgets"] = parse_budgets(sections["budgets"], environ)
        if "prices" in sections:
            if not isinstance(sections["prices"], dict):
                raise ConfigError('prices must be a table of models ([prices."gpt-4o"])')
            values["prices"] = PriceTable.from_config(sections["prices"])
        for key, value in table.items():
            if key in _SECTIONS or (table is data and key == "semcache"):
                continue
            key = RENAMED.get(key, key)
            if key not in infos:
                raise ConfigError(
                    f"unknown setting {key!r} in {config_file}; known settings: {', '.join(infos)}"
                )
            values[key] = _convert(infos[key], value, str(config_file))
    for old, new in RENAMED.items():
        if ENV_PREFIX + old.upper() in environ:
            values[new] = _convert(infos[new], environ[ENV_PREFIX + old.upper()], old.upper())
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
