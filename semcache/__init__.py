"""semcache: a semantic cache for LLM APIs.

Importing this package loads no model, opens no file and configures no logging.
"""

from semcache.cache import SemanticCache
from semcache.config import DEFAULT_MIN_SIMILARITY, CacheConfig
from semcache.decision import Decision, Hit
from semcache.embedding import Embedder, SentenceTransformerEmbedder, resolve_model
from semcache.errors import (
    CacheLockedError,
    ConfigError,
    CorruptEntryError,
    InvalidRequestError,
    ModelNotFoundError,
    SemcacheError,
    StoreError,
)
from semcache.keys import CacheRequest, Scope
from semcache.policy import Reason

__all__ = [
    "DEFAULT_MIN_SIMILARITY",
    "CacheConfig",
    "CacheLockedError",
    "CacheRequest",
    "ConfigError",
    "CorruptEntryError",
    "Decision",
    "Embedder",
    "Hit",
    "InvalidRequestError",
    "ModelNotFoundError",
    "Reason",
    "Scope",
    "SemanticCache",
    "SemcacheError",
    "SentenceTransformerEmbedder",
    "StoreError",
    "resolve_model",
]

__version__ = "0.1.0"
