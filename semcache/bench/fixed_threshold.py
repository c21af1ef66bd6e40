"""What ``max_error_rate`` is measured against on a stream: the best fixed threshold, chosen in
hindsight.

A fixed threshold (``min_confidence`` with a verifier, ``min_similarity`` without) is replayed
over the same stream in the same order, in the library (no HTTP: only hits and their labels
matter here). Each replay stores what it missed and takes an entry out of service once it
served a wrong answer, as the bounded replay does when it marks wrong hits. The best fixed
threshold is the lowest of a grid (steps of 0.01) whose realised error (wrong among judged
hits) stays within the bound: a lower threshold serves more. It is found by bisection, taking
the realised error to fall as the threshold rises (each replay of a long stream takes
minutes); every threshold replayed is reported. Choosing it needs every label of the stream,
which no cache has while it serves: the bound must beat it while learning as it goes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from semcache.bench.datasets import StreamItem, same_answer, scope_of
from semcache.bench.options import bar_off
from semcache.cache import SemanticCache
from semcache.config import CacheConfig
from semcache.embedding import Embedder, make_embedder
from semcache.evaluation import PrecomputedEmbedder
from semcache.keys import CacheRequest

# Probabilities (with a verifier) or cosines (without) searched.
CONFIDENCE_GRID = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))
SIMILARITY_GRID = tuple(round(0.8 + 0.01 * i, 2) for i in range(20))


@dataclass(frozen=True)
class FixedReplay:
    """One fixed threshold over the stream."""

    threshold: float
    hits: int
    right: int
    wrong: int

    @property
    def realised_error(self) -> float:
        judged = self.right + self.wrong
        return self.wrong / judged if judged else 0.0


@dataclass(frozen=True)
class FixedThresholds:
    knob: str  # min_confidence or min_similarity
    replays: list[FixedReplay]

    def best_within(self, max_error_rate: float) -> FixedReplay | None:
        """The replay with the most hits whose realised error is within ``max_error_rate``."""
        within = [r for r in self.replays if r.realised_error <= max_error_rate]
        return max(within, key=lambda r: (r.hits, -r.threshold), default=None)


def replay_fixed(
    order: Sequence[tuple[int, StreamItem]],
    items: Sequence[StreamItem],
    config: CacheConfig,
    max_error_rate: float,
    *,
    embedder: Embedder | None = None,
    progress: bool = True,
) -> FixedThresholds:
    """Search the grid for the lowest threshold within ``max_error_rate`` (see the module's
    docstring)."""
    vectors = PrecomputedEmbedder(
        embedder
        or make_embedder(
            config.model, models_dir=config.models_dir, backend=config.embedding_backend
        )
    )
    with tempfile.TemporaryDirectory(prefix="semcache-fixed-") as directory:
        with SemanticCache(Path(directory) / "probe", embedder=vectors, config=config) as probe:
            verified = probe.verifier is not None
        knob = "min_confidence" if verified else "min_similarity"
        grid = CONFIDENCE_GRID if verified else SIMILARITY_GRID
        replays: dict[float, FixedReplay] = {}

        def replay(threshold: float) -> FixedReplay:
            if threshold not in replays:
                fixed = (
                    replace(config, max_error_rate=None, min_confidence=threshold)
                    if verified
                    else replace(config, max_error_rate=None, min_similarity=threshold)
                )
                path = Path(directory) / f"{knob}-{threshold}"
                with SemanticCache(path, embedder=vectors, config=fixed) as cache:
                    replays[threshold] = _replay(cache, order, items, threshold, progress)
            return replays[threshold]

        low, high = 0, len(grid) - 1  # invariant: grid[high] is within the bound, if any is
        if replay(grid[high]).realised_error <= max_error_rate:
            while low < high:
                middle = (low + high) // 2
                if replay(grid[middle]).realised_error <= max_error_rate:
                    high = middle
                else:
                    low = middle + 1
    return FixedThresholds(knob, [replays[t] for t in sorted(replays)])


def _replay(
    cache: SemanticCache,
    order: Sequence[tuple[int, StreamItem]],
    items: Sequence[StreamItem],
    threshold: float,
    progress: bool,
) -> FixedReplay:
    hits = right = wrong = 0
    for item_id, item in tqdm(
        order, disable=bar_off(progress), desc=f"fixed {threshold}", unit="req"
    ):
        request = _request(item)
        decision = cache.lookup(request)
        if decision.hit is None:
            cache.store(request, item_id)
            continue
        hits += 1
        is_right, is_wrong, _ = same_answer(item, items[int(decision.hit.response)])
        right += is_right
        wrong += is_wrong
        if is_wrong:
            cache.mark_wrong(decision.hit.entry_id)
    return FixedReplay(threshold, hits, right, wrong)


def _request(item: StreamItem) -> CacheRequest:
    """The library's request for a stream item: its last user text in its scope."""
    return CacheRequest(prompt=item.text, namespace="bench", context=scope_of(item))
