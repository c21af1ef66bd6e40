"""Hits served under an error rate the user sets, learnt from what was right and what was not.

A fixed ``min_confidence`` (or ``min_similarity``) is a guess about traffic nobody has seen: the
verifier's probabilities are calibrated on Quora questions, and a cosine score means different
things for support tickets and for code. A user can say instead how many wrong answers they
accept (``max_error_rate``, e.g. 0.02). For each namespace the cache then keeps a tally of
labelled candidates, by score (the verifier's probability with a verifier, else the cosine):
whether the cached answer was right for the query. It serves a candidate only when its score is
at or above the namespace's **threshold**: the lowest score at which the candidates scoring at
least as much were wrong, by a one-sided 95% upper bound (Wilson) on their error rate, no more
often than the bound. With no labels the threshold is above every score: no semantic hit is
served on a guess (exact hits are not affected).

Labels come from feedback (:meth:`semcache.SemanticCache.feedback`): in the sidecar, every miss
that had a candidate (its stored answer compared with the upstream's, as shadow checks compare
them), shadow checks of served hits (weighted by the inverse of the share checked, so that the
sampled hits count as much as the misses that are all labelled); in the bench, the data's
labels. Every label must be drawn without regard to whether it is right or wrong: answers
marked wrong are not labels (only wrong hits get marked, so they would bias every tally up).

This module holds no I/O: the cache persists :meth:`ErrorBound.state` beside its entries.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

BINS = 100  # score bins over [0, 1]
CONFIDENCE_Z = 1.645  # one-sided 95%
NOTHING = math.inf  # the threshold with too little evidence: no score reaches it
# Labelling a candidate costs model work (two answers embedded); past this many labels in a
# namespace, a share of the candidates is labelled, each weighing the inverse of that share.
FULL_LABELS = 2000
MIN_LABEL_SHARE = 0.05  # labelling never stops: the traffic may change


def wilson_upper(wrong: float, total: float, z: float = CONFIDENCE_Z) -> float:
    """One-sided upper bound on a rate seen as ``wrong`` of ``total`` (weights allowed)."""
    if total <= 0:
        return 1.0
    rate = min(max(wrong / total, 0.0), 1.0)
    denominator = 1 + z * z / total
    centre = rate + z * z / (2 * total)
    spread = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    return min(1.0, (centre + spread) / denominator)


@dataclass
class _Tally:
    seen: NDArray[np.float64]  # weight of labelled candidates per score bin
    wrong: NDArray[np.float64]  # of which wrong
    squares: NDArray[np.float64]  # sum of squared weights: how many labels the weight is
    threshold: float = NOTHING

    @classmethod
    def empty(cls) -> _Tally:
        return cls(np.zeros(BINS), np.zeros(BINS), np.zeros(BINS))


def _bin(score: float) -> int:
    return min(BINS - 1, max(0, int(score * BINS)))


class ErrorBound:
    """Per namespace, the score a candidate needs so that served hits are wrong at most
    ``max_error_rate`` of the time (see the module's docstring). Thread-safe."""

    def __init__(self, max_error_rate: float, *, z: float = CONFIDENCE_Z) -> None:
        if not 0.0 < max_error_rate < 1.0:
            raise ValueError(f"max_error_rate must be in (0, 1), got {max_error_rate!r}")
        self.max_error_rate = max_error_rate
        self.z = z  # how sure the bound must be: 1.645 one-sided 95%, 0 the observed rate
        self._tallies: dict[str, _Tally] = {}
        self._lock = threading.Lock()

    def threshold(self, namespace: str) -> float:
        """The lowest score served in ``namespace`` (``inf``: none yet)."""
        with self._lock:
            tally = self._tallies.get(namespace)
            return NOTHING if tally is None else tally.threshold

    def allows(self, namespace: str, score: float) -> bool:
        return score >= self.threshold(namespace)

    def label_share(self, namespace: str) -> float:
        """The share of ``namespace``'s candidates worth labelling now: all of them until it
        has :data:`FULL_LABELS`, then fewer (never under :data:`MIN_LABEL_SHARE`)."""
        with self._lock:
            tally = self._tallies.get(namespace)
            seen = 0.0 if tally is None else float(tally.seen.sum())
        return 1.0 if seen <= FULL_LABELS else max(MIN_LABEL_SHARE, FULL_LABELS / seen)

    def record(self, namespace: str, score: float, *, wrong: bool, weight: float = 1.0) -> None:
        """A labelled candidate: its score and whether its answer was wrong for the query."""
        if not (math.isfinite(score) and math.isfinite(weight)) or weight <= 0:
            return
        with self._lock:
            tally = self._tallies.setdefault(namespace, _Tally.empty())
            position = _bin(score)
            tally.seen[position] += weight
            tally.wrong[position] += weight * wrong
            tally.squares[position] += weight * weight
            tally.threshold = self._fit(tally)

    def _fit(self, tally: _Tally) -> float:
        """The lowest edge of a bin with labels whose candidates at or above it meet the bound
        (never below the lowest score seen: no evidence, no hit)."""
        seen = np.cumsum(tally.seen[::-1])[::-1]  # weight at or above each bin
        wrong = np.cumsum(tally.wrong[::-1])[::-1]
        squares = np.cumsum(tally.squares[::-1])[::-1]
        best = NOTHING
        for position in range(BINS - 1, -1, -1):
            if tally.seen[position] <= 0:
                continue
            # Weighted labels (a shadow check of one hit in ten weighs 10) are as sure as
            # their effective number, (sum w)^2 / sum w^2, not as their total weight.
            labels = float(seen[position] ** 2 / squares[position])
            rate = float(wrong[position] / seen[position])
            upper = wilson_upper(rate * labels, labels, self.z)
            if upper <= self.max_error_rate:
                best = position / BINS
        return best

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per namespace: the threshold (``None`` while nothing is served), the labelled weight
        and its error rate, for stats."""
        with self._lock:
            return {
                namespace: {
                    "threshold": None if math.isinf(t.threshold) else t.threshold,
                    "labelled": float(t.seen.sum()),
                    "error_rate": float(t.wrong.sum() / t.seen.sum()) if t.seen.sum() else 0.0,
                }
                for namespace, t in self._tallies.items()
            }

    def state(self) -> dict[str, Any]:
        """What to persist (JSON-compatible)."""
        with self._lock:
            return {
                "bins": BINS,
                "namespaces": {
                    namespace: {
                        "seen": t.seen.tolist(),
                        "wrong": t.wrong.tolist(),
                        "squares": t.squares.tolist(),
                    }
                    for namespace, t in self._tallies.items()
                },
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state` returned; a malformed state is ignored (start afresh)."""
        try:
            if state.get("bins") != BINS:
                return
            tallies = {}
            for namespace, saved in state["namespaces"].items():
                seen, wrong, squares = (
                    np.asarray(saved[key], dtype=np.float64) for key in ("seen", "wrong", "squares")
                )
                if any(
                    a.shape != (BINS,) or not np.isfinite(a).all() for a in (seen, wrong, squares)
                ):
                    return
                if (wrong < 0).any() or (wrong > seen + 1e-9).any() or (squares < 0).any():
                    return
                if ((seen > 0) & (squares <= 0)).any():
                    return
                tallies[str(namespace)] = _Tally(seen, wrong, squares)
        except (AttributeError, KeyError, TypeError, ValueError):
            return
        with self._lock:
            for tally in tallies.values():
                tally.threshold = self._fit(tally)
            self._tallies = tallies


__all__ = ["ErrorBound", "wilson_upper"]
