"""What ``max_error_rate`` is measured against on a stream: the best fixed threshold, chosen in
hindsight.

A fixed threshold (``min_confidence`` with a verifier, ``min_similarity`` without) is replayed
over the same stream in the same order, once per threshold of a grid, in the library (no HTTP:
only hits and their labels matter here). Each replay stores what it missed and takes an entry
out of service once it served a wrong answer, as the bounded replay does when it marks wrong
hits. The best fixed threshold is the one with the most hits whose realised error (wrong among
judged hits) stays within the bound; choosing it needs every label of the stream, which no
cache has while it serves. The bound must beat it while learning as it goes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from semcache.bench.datasets import StreamItem, same_answer
from semcache.bench.options import bar_off
from semcache.cache import SemanticCache
from semcache.config import CacheConfig
from semcache.embedding import Embedder, make_embedder
from semcache.evaluation import PrecomputedEmbedder
from semcache.keys import CacheRequest

# Probabilities (with a verifier) or cosines (without) tried; finer where bounds of a few
# percent usually fall.
CONFIDENCE_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99)
SIMILARITY_GRID = (0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99)


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
    *,
    embedder: Embedder | None = None,
    progress: bool = True,
) -> FixedThresholds:
    """Replay ``order`` once per threshold of the grid (see the module's docstring)."""
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
        replays = []
        for threshold in tqdm(grid, disable=bar_off(progress), desc="fixed thresholds"):
            setting = {knob: threshold}
            fixed = replace(config, max_error_rate=None, **setting)
            path = Path(directory) / f"{knob}-{threshold}"
            hits = right = wrong = 0
            with SemanticCache(path, embedder=vectors, config=fixed) as cache:
                for item_id, item in order:
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
            replays.append(FixedReplay(threshold, hits, right, wrong))
    return FixedThresholds(knob, replays)


def _request(item: StreamItem) -> CacheRequest:
    """The library's request for a stream item: its last user text, scoped by everything else
    in the body and by the turns before it (as the sidecar scopes it)."""
    messages = item.body.get("messages") or []
    rest = {k: v for k, v in item.body.items() if k not in ("messages", "stream")}
    return CacheRequest(
        prompt=item.text, namespace="bench", context={"body": rest, "prior": messages[:-1]}
    )
