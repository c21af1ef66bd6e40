"""Settings of the cache core, validated once when a cache is opened."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcache.errors import ConfigError, SemcacheError

# The threshold when no verifier runs. Chosen from the threshold sweep in
# benchmarks/tune_threshold.py on QQP rows 3000-14999 with id % 10 != 0 (the tuning part),
# maximising F0.5 with the lexical guards on; see models/README.md for the curve and for the
# figures on the held-out rows (id % 10 == 0). With a verifier, the verifier's own floor and
# min_confidence apply (models/verifier/README.md).
DEFAULT_MIN_SIMILARITY = 0.85

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def default_models_dir() -> Path:
    """The project's ``models/`` folder, or ``$SEMCACHE_MODELS_DIR`` when set."""
    env = os.environ.get("SEMCACHE_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Options of :class:`semcache.SemanticCache`.

    Attributes:
        min_similarity: cosine similarity in (0, 1] a candidate needs to be served (with a
            verifier: to be verified); higher is stricter. ``None``: the verifier's calibrated
            floor, or ``DEFAULT_MIN_SIMILARITY`` without one. Overridable per lookup.
        verifier: the second stage that judges each candidate (``semcache.verification``):
            ``"auto"`` uses the project's verifier when it was trained for this embedding
            model, ``None`` turns verification off, anything else names one under
            ``models_dir/verifier/`` or is a path.
        min_confidence: probability in [0, 1] the verifier must give a candidate for it to be
            served; ``None``: the verifier's default. Overridable per lookup.
        verify_top: candidates above the floor and past the guards sent to the verifier per
            lookup, most similar first; the most probable is served. The default, 1, makes
            the verifier a gate on the nearest candidate: letting it pick a farther one
            served more wrong hits on data unlike its training (models/verifier/README.md).
        ttl_s: default lifetime of an entry in seconds; ``None`` keeps entries until evicted.
        max_entries: bound on the number of entries; the least recently used go first.
        max_bytes: bound on the encoded size of all entries in bytes, evicted the same way.
        model: name or path of the sentence-transformers model (see ``models/README.md``).
        models_dir: folder searched for a model given by name before the packaged weights.
        guards: reject candidates whose numbers, negation, named entities or quoted strings
            differ from the query's, whatever their similarity.
        top_k: candidates examined per semantic lookup.
        exact_index_max: vectors per scope kept in an exact (flat) index; above it a scope moves
            to an IVF index.
        ivf_nprobe: inverted lists probed per IVF search (recall against speed).
        workers: threads that run embedding, FAISS and disk work for the awaitable methods.
        embed_batch_size: texts per forward pass of the model.
        threads: threads one embedding or one FAISS search may use (torch's intra-op threads,
            FAISS's OpenMP threads; both are process-wide). ``None`` leaves the libraries'
            defaults, one per core, which on a busy host makes a lookup 20-40x slower
            (benchmarks/threads_bench.py); 1, the default, holds up under load.
    """

    min_similarity: float | None = None
    verifier: str | None = "auto"
    min_confidence: float | None = None
    verify_top: int = 1
    ttl_s: float | None = None
    max_entries: int | None = None
    max_bytes: int | None = None
    model: str | None = None
    models_dir: Path | None = None
    guards: bool = True
    top_k: int = 8
    exact_index_max: int = 50_000
    ivf_nprobe: int = 32
    workers: int = 4
    embed_batch_size: int = 64
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.min_similarity is not None:
            check_similarity(self.min_similarity, "min_similarity")
        if self.min_confidence is not None:
            check_confidence(self.min_confidence, "min_confidence")
        if self.verifier is not None and (not isinstance(self.verifier, str) or not self.verifier):
            raise ConfigError(
                f"verifier must be 'auto', a name, a path or None, got {self.verifier!r}"
            )
        if self.ttl_s is not None:
            check_ttl(self.ttl_s, "ttl_s")
        for name in ("max_entries", "max_bytes"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        positive = ("top_k", "verify_top", "exact_index_max", "ivf_nprobe", "workers")
        for name in (*positive, "embed_batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigError(f"model must be a model name or a path, got {self.model!r}")
        if not isinstance(self.guards, bool):
            raise ConfigError(f"guards must be True or False, got {self.guards!r}")

    @classmethod
    def from_options(cls, **options: Any) -> CacheConfig:
        """Build a config from keyword options, naming the valid ones when one is unknown.

        Raises:
            ConfigError: an option is unknown or its value is invalid.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown cache option(s) {', '.join(unknown)}; valid options are "
                f"{', '.join(sorted(known))}"
            )
        if isinstance(options.get("models_dir"), str):
            options["models_dir"] = Path(options["models_dir"])
        return cls(**options)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_similarity(value: object, name: str, error: type[SemcacheError] = ConfigError) -> float:
    """Validate a cosine threshold in (0, 1].

    Raises:
        ``error`` (ConfigError by default): ``value`` is not a number in (0, 1].
    """
    if not _is_number(value) or not (0.0 < float(value) <= 1.0):  # type: ignore[arg-type]
        raise error(f"{name} must be a number in (0, 1] (cosine similarity), got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_confidence(value: object, name: str, error: type[SemcacheError] = ConfigError) -> float:
    """Validate a probability threshold in [0, 1].

    Raises:
        ``error`` (ConfigError by default): ``value`` is not a number in [0, 1].
    """
    if not _is_number(value) or not (0.0 <= float(value) <= 1.0):  # type: ignore[arg-type]
        raise error(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_ttl(value: object, name: str, error: type[SemcacheError] = ConfigError) -> float:
    """Validate a lifetime in seconds.

    Raises:
        ``error`` (ConfigError by default): ``value`` is not a positive finite number.
    """
    if not _is_number(value) or not (0.0 < float(value) < math.inf):  # type: ignore[arg-type]
        raise error(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)  # type: ignore[arg-type]
