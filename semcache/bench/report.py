"""Figures of a bench run: a table on the terminal, ``results.json`` and PNG plots."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from semcache.bench.fixed_threshold import FixedThresholds
from semcache.bench.pairs import PairReport
from semcache.bench.stream import StreamResult
from semcache.evaluation import Scores


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    array = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(array, q)), 2) for q in (50, 90, 99)}


def stream_figures(
    result: StreamResult, hittable: Sequence[bool], *, calls_without_cache: int, cost_all: float
) -> dict[str, Any]:
    hits = sum(result.hits)
    right, wrong, unverified = sum(result.right), sum(result.wrong), sum(result.unverified)
    judged = right + wrong  # an unverified hit (no label says) is neither right nor wrong
    could = sum(hittable)
    hit_lat = [lat for lat, h in zip(result.latency_ms, result.hits, strict=True) if h]
    miss_lat = [lat for lat, h in zip(result.latency_ms, result.hits, strict=True) if not h]
    return {
        "requests": len(result.hits),
        "hits": hits,
        "right": right,
        "wrong": wrong,
        "unverified": unverified,
        "hit_rate": hits / len(result.hits) if result.hits else 0.0,
        # None, not 0 or 1, when no hit was judged: nothing is known about them.
        "precision": right / judged if judged else None,
        "recall": right / could if could else None,
        "hittable": could,
        "upstream_calls": len(result.hits) - hits,
        "upstream_calls_saved": hits,
        "share_of_calls_saved": hits / calls_without_cache if calls_without_cache else 0.0,
        "tokens_saved": result.tokens_saved,
        "dollars_saved": round(result.dollars_saved, 6),
        "share_of_spend_saved": result.dollars_saved / cost_all if cost_all else 0.0,
        "latency_ms_hits": _percentiles(hit_lat),
        "latency_ms_misses": _percentiles(miss_lat),
        "by_kind": _by_kind(result),
    }


def _by_kind(result: StreamResult) -> dict[str, dict[str, int]]:
    """Requests, hits, right and wrong hits per kind of request (conversations: opening,
    follow-up, follow-up after reworded history), and of the wrong ones those the data answers
    with the very answer served (``wrong_same_reference``); empty when the stream has no
    kinds."""
    out: dict[str, dict[str, int]] = {}
    for i, kind in enumerate(result.kinds):
        if kind:
            counts = out.setdefault(
                kind,
                {"requests": 0, "hits": 0, "right": 0, "wrong": 0, "wrong_same_reference": 0},
            )
            counts["requests"] += 1
            counts["hits"] += result.hits[i]
            counts["right"] += result.right[i]
            counts["wrong"] += result.wrong[i]
            counts["wrong_same_reference"] += result.wrong_same_reference[i]
    return out


def bounded_stream_figures(
    result: StreamResult, max_error_rate: float, fixed: FixedThresholds | None = None
) -> dict[str, Any]:
    """A replay under ``max_error_rate``: the realised error of its judged hits against the
    bound, over the whole stream and cumulatively at each tenth of it, the score the bound
    asked of a hit at each tenth (``None`` while it served nothing), and what each fixed
    threshold of ``fixed`` did over the same stream, with the best within the bound."""
    n = len(result.hits)
    right = np.cumsum(result.right)
    wrong = np.cumsum(result.wrong)
    tenths = []
    for k in range(1, 11):
        upto = max(1, k * n // 10) - 1 if n else 0
        judged = int(right[upto] + wrong[upto]) if n else 0
        tenths.append(
            {
                "requests": upto + 1 if n else 0,
                "hits_judged": judged,
                "realised_error": float(wrong[upto]) / judged if judged else None,
                "threshold": result.bounded[upto] if result.bounded else None,
            }
        )
    judged = int(sum(result.right) + sum(result.wrong))
    realised = sum(result.wrong) / judged if judged else None
    figures: dict[str, Any] = {
        "max_error_rate": max_error_rate,
        "hits": int(sum(result.hits)),
        "wrong": int(sum(result.wrong)),
        "realised_error": realised,
        "within_bound": realised is None or realised <= max_error_rate,
        "labels_learnt": round(result.labelled, 1),
        "by_tenth": tenths,
    }
    if fixed is not None:
        best = fixed.best_within(max_error_rate)
        figures["fixed"] = {
            "knob": fixed.knob,
            "replays": [
                {**dataclasses.asdict(r), "realised_error": r.realised_error} for r in fixed.replays
            ],
            "best_within_bound": None if best is None else best.threshold,
        }
        figures["beats_best_fixed"] = best is None or figures["hits"] > best.hits
    return figures


def print_bounded_stream(figures: dict[str, Any]) -> str:
    realised = figures["realised_error"]
    shown = "no judged hit" if realised is None else f"{realised:.4f}"
    lines = [
        f"error bound {figures['max_error_rate']}: {figures['hits']} hits, {figures['wrong']} "
        f"wrong, realised error {shown} "
        f"({'within' if figures['within_bound'] else 'OVER'} the bound), learnt from "
        f"{figures['labels_learnt']:g} labels; over the stream:",
        f"{'requests':>9} | {'judged hits':>11} | {'error so far':>12} | {'score asked':>11}",
    ]
    for tenth in figures["by_tenth"]:
        error = tenth["realised_error"]
        threshold = tenth["threshold"]
        lines.append(
            f"{tenth['requests']:>9} | {tenth['hits_judged']:>11} | "
            f"{'-' if error is None else f'{error:.4f}':>12} | "
            f"{'-' if threshold is None else f'{threshold:.3f}':>11}"
        )
    fixed = figures.get("fixed")
    if fixed is not None:
        lines.append(f"fixed {fixed['knob']} over the same stream (* best within the bound):")
        lines.append(f"{'threshold':>9} | {'hits':>6} | {'wrong':>6} | {'error':>7}")
        for replay in fixed["replays"]:
            best = "*" if replay["threshold"] == fixed["best_within_bound"] else " "
            lines.append(
                f"{replay['threshold']:>8}{best} | {replay['hits']:>6} | {replay['wrong']:>6} | "
                f"{replay['realised_error']:>7.4f}"
            )
        verdict = "more" if figures["beats_best_fixed"] else "no more"
        lines.append(f"the bound served {verdict} hits than the best fixed threshold")
    return "\n".join(lines)


def print_stream_table(figures: dict[str, dict[str, Any]]) -> str:
    header = (
        f"{'cache':<36} | {'hits':>6} | {'right':>6} | {'wrong':>6} | {'unverif':>7} | "
        f"{'hit rate':>8} | {'precision':>9} | {'recall':>6} | {'calls':>6} | {'$ saved':>8} | "
        f"{'hit p50/p99 ms':>15} | {'miss p50/p99 ms':>16}"
    )
    lines = [header, "-" * len(header)]
    for name, f in figures.items():
        hit, miss = f["latency_ms_hits"], f["latency_ms_misses"]
        hit_lat = "-" if hit["p50"] is None else f"{hit['p50']:.0f}/{hit['p99']:.0f}"
        miss_lat = "-" if miss["p50"] is None else f"{miss['p50']:.0f}/{miss['p99']:.0f}"
        lines.append(
            f"{name:<36} | {f['hits']:>6} | {f['right']:>6} | {f['wrong']:>6} | "
            f"{f['unverified']:>7} | {f['hit_rate']:>8.3f} | {_figure(f['precision'], 9)} | "
            f"{_figure(f['recall'], 6)} | {f['upstream_calls']:>6} | {f['dollars_saved']:>8.4f} | "
            f"{hit_lat:>15} | {miss_lat:>16}"
        )
    kinds = [k for f in figures.values() for k in f.get("by_kind", {})]
    if kinds:
        lines += [
            "",
            "by kind of request: hits (right / wrong [of which the data gives the query the "
            "answer served]) of requests",
        ]
        for kind in dict.fromkeys(kinds):
            cells = []
            for name, f in figures.items():
                c = f["by_kind"].get(kind)
                if c is not None:
                    cells.append(
                        f"{name}: {c['hits']} ({c['right']} / {c['wrong']} "
                        f"[{c['wrong_same_reference']}]) of {c['requests']}"
                    )
            lines.append(f"{kind:<36} | " + "; ".join(cells))
    return "\n".join(lines)


def _figure(value: float | None, width: int) -> str:
    """A ratio, or "unjudged" when the data could not tell (no judged hit, no labels)."""
    return f"{'unjudged':>{width}}" if value is None else f"{value:>{width}.3f}"


def pair_figures(report: PairReport) -> dict[str, Any]:
    at_target = next((m for m in report.sweep if m.threshold == report.target_threshold), None)
    return {
        **{k: v for k, v in report.semcache.as_dict().items()},
        "knob": report.knob,
        "floor": report.floor,
        "verifier": report.verifier,
        "target_precision": report.target_precision,
        "threshold_at_target": report.target_threshold,
        "recall_at_target": None if at_target is None else at_target.recall,
        "baselines": {k: None if m is None else m.as_dict() for k, m in report.baselines.items()},
        "swaps": {
            cache: {kind: m.as_dict() for kind, m in kinds.items()}
            for cache, kinds in report.swaps.items()
        },
        "sweep": [m.as_dict() for m in report.sweep],
        "notes": report.notes,
        "error_bound": [
            {**dataclasses.asdict(b), "realised_error": b.realised_error} for b in report.bounded
        ],
    }


def print_pair_table(report: PairReport) -> str:
    name_width = 44
    header = (
        f"{'cache':<{name_width}} | {'hits':>6} | {'right':>6} | {'wrong':>6} | "
        f"{'unjudged':>8} | {'hit rate':>8} | {'precision':>9} | {'judged':>6} | "
        f"{'recall':>6} | {'false hits':>10}"
    )
    lines = [header, "-" * len(header)]
    if report.verifier is None:
        semcache = f"semcache (min_similarity {report.threshold})"
    else:
        semcache = f"semcache (floor {report.floor}, min_confidence {report.threshold})"
    rows: list[tuple[str, Scores | None]] = [
        (semcache, report.semcache),
        *report.baselines.items(),
    ]
    for name, m in rows:
        if m is None:
            lines.append(f"{name:<{name_width}} | not installed")
            continue
        lines.append(
            f"{name:<{name_width}} | {m.hits:>6} | {m.right:>6} | {m.wrong:>6} | "
            f"{m.unjudged:>8} | {m.hit_rate:>8.3f} | {m.precision:>9.3f} | "
            f"{m.precision_judged:>6.3f} | {m.recall:>6.3f} | {m.false_hit_rate:>10.3f}"
        )
    lines.append(
        f"precision counts unjudged hits (pairs no row labels) as wrong; 'judged' leaves them "
        f"out. Recall is over the {report.semcache.answerable} queries with a right answer stored."
    )
    lines.append("")
    kinds = list(next(iter(report.swaps.values()), {}))
    if kinds:
        variants = next(iter(report.swaps.values()))["all"].queries
        lines.append(f"adversarial swaps ({variants} variants of stored questions): false hits")
        lines.append(f"{'cache':<{name_width}} | " + " | ".join(f"{k:>10}" for k in kinds))
        for name, figures in report.swaps.items():
            cells = " | ".join(f"{figures[k].false_hit_rate:>10.4f}" for k in kinds)
            lines.append(f"{(semcache if name == 'semcache' else name):<{name_width}} | {cells}")
        lines.append("")
    lines.append(f"{report.knob} sweep (semcache):")
    lines.append(
        f"{report.knob:>14} | {'precision':>9} | {'judged':>6} | {'recall':>6} | {'hit rate':>8}"
    )
    step = 5 if report.knob == "min_similarity" else 2
    shown = report.sweep[::step]
    if shown[-1] is not report.sweep[-1]:
        shown.append(report.sweep[-1])
    for m in shown:
        lines.append(
            f"{m.threshold:>14.2f} | {m.precision:>9.3f} | {m.precision_judged:>6.3f} | "
            f"{m.recall:>6.3f} | {m.hit_rate:>8.3f}"
        )
    if report.bounded:
        first = report.bounded[0]
        fixed = first.fixed_wrong / first.fixed_served if first.fixed_served else 0.0
        lines += [
            "",
            f"error bound {first.max_error_rate}: the lookups replayed in a random order, each "
            f"of the {first.candidates} candidates' labels fed back after it",
            f"  best fixed {report.knob} in hindsight ({first.fixed_threshold}): "
            f"{first.fixed_served} hits, {first.fixed_wrong} wrong, error {fixed:.4f}",
        ]
        for bounded in report.bounded:
            lines.append(
                f"  learnt online, z {bounded.z:.3g}: {bounded.served} hits served, "
                f"{bounded.wrong} wrong, realised error {bounded.realised_error:.4f}"
            )
    if report.target_threshold is None:
        lines.append(f"no {report.knob} reaches precision {report.target_precision}")
    else:
        at = next(m for m in report.sweep if m.threshold == report.target_threshold)
        lines.append(
            f"precision {report.target_precision} is first reached at {report.knob} "
            f"{report.target_threshold}, with recall {at.recall:.3f}"
        )
    return "\n".join(lines)


def write_json(out: Path, figures: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pairs(out: Path, report: PairReport) -> list[Path]:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    thresholds = [m.threshold for m in report.sweep]
    axes.plot(thresholds, [m.precision for m in report.sweep], label="precision of hits")
    axes.plot(
        thresholds,
        [m.precision_judged for m in report.sweep],
        label="precision of judged hits",
        linestyle="--",
    )
    axes.plot(thresholds, [m.recall for m in report.sweep], label="recall")
    axes.plot(thresholds, [m.hit_rate for m in report.sweep], label="hit rate", linestyle=":")
    axes.axvline(
        report.threshold, color="grey", linestyle="--", label=f"default {report.threshold}"
    )
    axes.set_xlabel(
        "min_similarity (cosine)"
        if report.knob == "min_similarity"
        else f"min_confidence (verifier {report.verifier}, floor {report.floor})"
    )
    axes.set_ylim(0, 1)
    axes.set_title(f"Pairs: {report.rows} rows, {report.duplicates} duplicates")
    axes.legend()
    axes.grid(alpha=0.3)
    path = out / f"precision_recall_vs_{report.knob}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]


def plot_stream(out: Path, results: Sequence[StreamResult]) -> list[Path]:
    plt = _pyplot()
    paths = []
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for result in results:
        if result.name == "no cache":
            continue
        hits = np.cumsum(result.hits)
        axes.plot(
            np.arange(1, len(hits) + 1), hits / np.arange(1, len(hits) + 1), label=result.name
        )
        wrong = np.cumsum(np.array(result.wrong) | np.array(result.unverified))
        axes.plot(
            np.arange(1, len(wrong) + 1), wrong / np.arange(1, len(wrong) + 1),
            linestyle=":", label=f"{result.name}: wrong or unverified",
        )  # fmt: skip
    axes.set_xlabel("requests so far")
    axes.set_ylabel("cumulative rate")
    axes.set_title("Hit rate over the stream (cache starts empty)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(out / "hit_rate_over_stream.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    semcache = results[0]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    hit_lat = [lat for lat, h in zip(semcache.latency_ms, semcache.hits, strict=True) if h]
    miss_lat = [lat for lat, h in zip(semcache.latency_ms, semcache.hits, strict=True) if not h]
    bins = np.logspace(0, 4.5, 60)
    if hit_lat:
        axes.hist(hit_lat, bins=bins, alpha=0.7, label=f"hits ({len(hit_lat)})")
    if miss_lat:
        axes.hist(
            miss_lat, bins=bins, alpha=0.7, label=f"misses ({len(miss_lat)}, simulated upstream)"
        )
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("requests")
    axes.set_title("semcache latency, hits and misses")
    axes.legend()
    figure.tight_layout()
    paths.append(out / "latency_histogram.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths
