"""Shadow checks: a sample of hits is also answered upstream and the two answers compared.

The share of checked hits whose answers disagree is a live estimate of the false-hit rate, the
one figure a benchmark on someone else's data cannot give. Answers are compared by meaning, not
by text, because two correct answers from a model are rarely word for word the same: equal after
normalisation, or embeddings at least ``agreement`` apart in cosine similarity.

This module holds no HTTP; the sidecar sends the requests (:mod:`semcache.server.shadow_checks`).
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from semcache.keys import normalize_prompt

DEFAULT_WINDOW = 1000


@dataclass(frozen=True)
class Verdict:
    agree: bool
    similarity: float


def compare_answers(
    cached: str,
    fresh: str,
    *,
    embed: Callable[[Sequence[str]], NDArray[np.float32]],
    agreement: float,
) -> Verdict:
    """Whether ``fresh`` (the upstream's answer now) agrees with ``cached`` (the answer served).

    ``embed`` returns unit vectors (as the cache's embedder does)."""
    if normalize_prompt(cached) == normalize_prompt(fresh):
        return Verdict(True, 1.0)
    if not cached.strip() or not fresh.strip():
        return Verdict(False, 0.0)
    vectors = embed([cached, fresh])
    similarity = float(np.dot(vectors[0], vectors[1]))
    return Verdict(similarity >= agreement, similarity)


class ShadowSampler:
    """Decides which hits are checked, and keeps the verdicts of the last ``window`` checks."""

    def __init__(
        self, fraction: float, *, window: int = DEFAULT_WINDOW, rng: random.Random | None = None
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        self.fraction = fraction
        self._rng = rng or random.Random()
        self._recent: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    def should_check(self) -> bool:
        return self.fraction > 0 and self._rng.random() < self.fraction

    def record(self, verdict: Verdict) -> None:
        with self._lock:
            self._recent.append(verdict.agree)

    @property
    def checks(self) -> int:
        """Verdicts in the window."""
        with self._lock:
            return len(self._recent)

    def false_hit_rate(self) -> float | None:
        """Share of the recent checks whose answers disagreed; ``None`` before any check."""
        with self._lock:
            if not self._recent:
                return None
            return sum(not agree for agree in self._recent) / len(self._recent)
