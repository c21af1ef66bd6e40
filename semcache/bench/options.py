"""The options of a bench run, kept apart from the heavy parts so ``semcache --help`` is quick."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

MODES = ("pairs", "stream")


@dataclass(kw_only=True)
class BenchOptions:
    file: Path
    out: Path
    mode: str | None = None
    split: str = "all"
    seed: int = 0
    limit: int | None = None
    target_precision: float = 0.9
    max_error_rate: float | None = None
    history_match: str = "exact"
    min_similarity: float | None = None
    min_confidence: float | None = None
    model: str | None = None
    latency_median_ms: float = 800.0
    price_in_per_1k: float = 0.00015
    price_out_per_1k: float = 0.0006
    progress: bool = True
    gptcache: bool = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", type=Path, help="JSONL: pairs, clusters, prompts, conversations or request bodies"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="folder for results.json and plots"
    )
    parser.add_argument("--mode", choices=MODES, help="pairs or stream (default: from the rows)")
    parser.add_argument(
        "--split",
        choices=("all", "train", "test"),
        default="all",
        help="pairs: test = rows with id %% 10 == 0, train = the rest; streams: a row's own "
        "split field (BANKING77's), else test = rows at position %% 10 == 0",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="order of the stream and simulated draws"
    )
    parser.add_argument(
        "--limit", type=int, help="stream: replay only the first N requests of the shuffle"
    )
    parser.add_argument(
        "--target-precision",
        type=float,
        default=0.9,
        help="pairs: report the setting of the knob that first reaches this precision",
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        help="pairs: also replay the lookups as a stream with this error bound, every "
        "candidate's label fed back; stream: also replay the stream through a sidecar with this "
        "bound, learning from its own feedback (misses' candidates, wrong hits marked wrong); "
        "both report the realised error (see 'Error bound')",
    )
    parser.add_argument(
        "--history-match",
        choices=("exact", "meaning"),
        default="exact",
        help="stream: the sidecar's history_match (how a follow-up's earlier user turns must "
        "match a cached conversation's)",
    )
    parser.add_argument(
        "--min-similarity",
        type=float,
        help="semcache's similarity floor (default: its own; the verifier's floor with one)",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        help="probability semcache's verifier must give a hit (default: the verifier's own)",
    )
    parser.add_argument("--model", help="embedding model name or path (see models/README.md)")
    parser.add_argument(
        "--latency-median-ms",
        type=float,
        default=800.0,
        help="stream: median of the simulated upstream latency",
    )
    parser.add_argument(
        "--price-in",
        dest="price_in_per_1k",
        type=float,
        default=0.00015,
        help="stream: USD per 1K prompt tokens (default gpt-4o-mini)",
    )
    parser.add_argument(
        "--price-out",
        dest="price_out_per_1k",
        type=float,
        default=0.0006,
        help="stream: USD per 1K completion tokens",
    )
    parser.add_argument(
        "--no-gptcache",
        dest="gptcache",
        action="store_false",
        help="leave out the GPTCache baseline (the slowest part of a long stream)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")  # fmt: skip


def bar_off(progress: bool) -> bool | None:
    """tqdm's ``disable``: off when asked, and off by itself when the output is not a terminal
    (a log would fill with progress lines)."""
    return None if progress else True
