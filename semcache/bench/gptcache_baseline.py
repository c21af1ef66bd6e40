"""GPTCache as a baseline, with the same embedding model and its own default threshold.

Used only when the optional ``gptcache`` extra is installed (from a checkout:
``pip install -e '.[gptcache]'``).
GPTCache's default similarity check (``SearchDistanceEvaluation`` over FAISS L2 distances, with
``Config.similarity_threshold`` 0.8) is kept as it ships: the point is to measure what its users
get by default. Its default size bound (1,000 entries, then eviction) is lifted, so the
comparison is of matching, not of capacity.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semcache.embedding import resolve_model


def available() -> bool:
    return importlib.util.find_spec("gptcache") is not None


def skipped(asked: bool) -> str:
    """The note a bench prints when the baseline did not run: left out, or not installed."""
    return "GPTCache baseline skipped: " + (
        "pip install -e '.[gptcache]'" if asked else "--no-gptcache"
    )


class GPTCacheBaseline:
    """A GPTCache instance in a temporary directory: ``put(prompt, answer)``, ``get(prompt)``."""

    def __init__(self, model: str | None = None) -> None:
        _, path = resolve_model(model)  # the same local weights semcache uses: no hub
        self.directory = Path(tempfile.mkdtemp(prefix="gptcache-"))
        # GPTCache flushes its index from an atexit hook that Cache.init registers; atexit runs
        # hooks last-in first-out, so removing the folder is registered first, to run after it.
        atexit.register(shutil.rmtree, self.directory, ignore_errors=True)
        # GPTCache 0.1.44 uses SQLAlchemy 1.x names that 2.x deprecates: its noise, not ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self._cache = self._build(str(path))

    def _build(self, model_path: str) -> Any:
        from gptcache import Cache, Config
        from gptcache.embedding import SBERT
        from gptcache.manager import manager_factory
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

        embedding = SBERT(model_path)
        manager = manager_factory(
            "sqlite,faiss",
            data_dir=str(self.directory),
            # GPTCache evicts beyond 1,000 entries by default (for sqlite,faiss the bound is read
            # from eviction_params, not max_size); a benchmark of matching must not lose entries
            # to a size bound semcache does not have.
            eviction_params={"max_size": 10**9},
            vector_params={"dimension": embedding.dimension},
        )
        cache = Cache()
        cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=embedding.to_embeddings,
            data_manager=manager,
            similarity_evaluation=SearchDistanceEvaluation(),
            config=Config(),
        )
        self.threshold = Config().similarity_threshold
        return cache

    def put_many(self, prompts: Sequence[str], answers: Sequence[str]) -> None:
        from gptcache.adapter.api import put

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for prompt, answer in zip(prompts, answers, strict=True):
                put(prompt, answer, cache_obj=self._cache)

    def get(self, prompt: str) -> Any:
        from gptcache.adapter.api import get

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return get(prompt, cache_obj=self._cache)

    def close(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self._cache.data_manager.close()
