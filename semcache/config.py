"""Settings of the cache core, validated once when a cache is opened."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
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
    """The project's ``models/`` folder, or ``$SEMCACHE_MODELS_DIR`` when set.

    An installed wheel carries the folder inside the package (``semcache/models``, see
    pyproject.toml); a checkout has it beside the package. Both resolve the same artefacts.
    """
    env = os.environ.get("SEMCACHE_MODELS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    packaged = here / "models"
    return packaged if packaged.is_dir() else here.parent / "models"


def option(default: Any, help: str) -> Any:
    """A setting with its help: one declaration feeds the library's keyword options and the
    sidecar's flags, environment variables, config file keys and README table."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Options of :class:`semcache.SemanticCache`, each with its help text (the sidecar takes
    every one of them as a setting too). ``None`` for ``min_similarity`` means the verifier's
    calibrated floor, or ``DEFAULT_MIN_SIMILARITY`` without a verifier."""

    min_similarity: float | None = option(
        None,
        "cosine similarity a cached answer needs, in (0, 1] (none: the verifier's floor, or "
        f"{DEFAULT_MIN_SIMILARITY} without a verifier)",
    )
    verifier: str | None = option(
        "auto", "hit verifier: auto, a name under models/verifier/, a path, or none"
    )
    min_confidence: float | None = option(
        None, "probability the verifier must give a cached answer, in [0, 1] (none: its default)"
    )
    verify_top: int = option(
        1,
        "candidates past the floor and the guards that the verifier reads, nearest first (1: "
        "it gates the nearest; more served more wrong hits on unlike data)",
    )
    max_error_rate: float | None = option(
        None,
        "share of semantic hits allowed to be wrong, learnt per namespace from feedback "
        "(none: min_confidence decides alone; see 'Error bound' in the README)",
    )
    ttl_s: float | None = option(None, "lifetime of a cached answer in seconds (none: no limit)")
    max_entries: int | None = option(None, "bound on cached answers, least recently used evicted")
    max_bytes: int | None = option(None, "bound on the size of cached answers in bytes")
    model: str | None = option(None, "embedding model name or path (see models/README.md)")
    embedding_backend: str = option(
        "onnx",
        "what runs the embedding model: onnx (ONNX Runtime, exported from the same weights; "
        "torch when onnxruntime is missing) or torch (sentence-transformers)",
    )
    models_dir: Path | None = option(
        None, "folder searched for models and verifiers by name (none: the project's models/)"
    )
    guards: bool = option(
        True, "refuse candidates whose numbers, negation, names or quoted text differ"
    )
    top_k: int = option(8, "candidates examined per semantic lookup")
    exact_index_max: int = option(
        50_000, "vectors per scope in an exact index before it moves to IVF"
    )
    ivf_nprobe: int = option(
        16, "inverted lists probed per IVF search, of about sqrt(n) (recall against speed)"
    )
    workers: int = option(4, "threads that run the model, FAISS and disk work off the event loop")
    embed_batch_size: int = option(
        64, "texts per forward pass on the torch backend (the onnx one sizes passes by length)"
    )
    threads: int | None = option(
        1,
        "threads one embedding or index search may use; the onnx backend runs one call per core "
        "at once instead (none: one per core; see 'Sizing' in the README)",
    )

    def __post_init__(self) -> None:
        if self.min_similarity is not None:
            check_similarity(self.min_similarity, "min_similarity")
        if self.min_confidence is not None:
            check_confidence(self.min_confidence, "min_confidence")
        if self.verifier is not None and (not isinstance(self.verifier, str) or not self.verifier):
            raise ConfigError(
                f"verifier must be 'auto', a name, a path or None, got {self.verifier!r}"
            )
        rate = self.max_error_rate
        if rate is not None and (not _is_number(rate) or not 0.0 < rate < 1.0):
            raise ConfigError(
                f"max_error_rate must be a number in (0, 1) or None, got {self.max_error_rate!r}"
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
        if self.embedding_backend not in ("onnx", "torch"):
            raise ConfigError(
                f"embedding_backend must be 'onnx' or 'torch', got {self.embedding_backend!r}"
            )
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
