"""One bench run, from a file to its figures, used by ``semcache bench`` and benchmarks/bench.py."""

from __future__ import annotations

import time
from typing import Any

from semcache.bench import pairs, report, stream
from semcache.bench.datasets import detect_format, read_rows, stream_items, stream_rows
from semcache.bench.options import BenchOptions
from semcache.embedding import Embedder
from semcache.errors import InvalidRequestError
from semcache.evaluation import Labels
from semcache.pricing import Price


def run_bench(options: BenchOptions, *, embedder: Embedder | None = None) -> dict[str, Any]:
    """Run, print the table, write results.json and the plots; returns the figures.

    Raises:
        InvalidRequestError: the file cannot be read or its rows do not fit the mode.
    """
    rows = read_rows(options.file)
    fmt = detect_format(rows[0])
    mode = options.mode or ("pairs" if fmt == "pairs" else "stream")
    if mode == "pairs" and fmt != "pairs":
        raise InvalidRequestError(
            f"pair mode needs pair rows (a, b, duplicate), not {fmt}", field="mode"
        )
    started = time.time()
    options.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "file": str(options.file),
        "format": fmt,
        "mode": mode,
        "seed": options.seed,
    }
    if mode == "pairs":
        selected = pairs.pair_rows(rows, options.split)
        if not selected:
            raise InvalidRequestError(f"no rows in split {options.split!r}", field="split")
        result = pairs.run(
            selected,
            labels=Labels(pairs.pair_rows(rows, "all")),
            embedder=embedder,
            min_similarity=options.min_similarity,
            min_confidence=options.min_confidence,
            target_precision=options.target_precision,
            model=options.model,
            progress=options.progress,
            seed=options.seed,
            max_error_rate=options.max_error_rate,
            gptcache=options.gptcache,
        )
        figures.update(split=options.split, rows=result.rows, duplicates=result.duplicates)
        figures.update(report.pair_figures(result))
        table = report.print_pair_table(result)
        plots = report.plot_pairs(options.out, result)
    else:
        simulation = stream.Simulation(
            seed=options.seed,
            latency_median_ms=options.latency_median_ms,
            price=Price(options.price_in_per_1k, options.price_out_per_1k),
        )
        selected_rows = stream_rows(rows, options.split)
        if not selected_rows:
            raise InvalidRequestError(f"no rows in split {options.split!r}", field="split")
        items = stream_items(selected_rows, fmt)
        results, hittable, cost_all, notes, fixed = stream.run(
            items,
            simulation=simulation,
            limit=options.limit,
            embedder=embedder,
            min_similarity=options.min_similarity,
            min_confidence=options.min_confidence,
            model=options.model,
            progress=options.progress,
            max_error_rate=options.max_error_rate,
            history_match=options.history_match,
            gptcache=options.gptcache,
        )
        none = results[2]
        by_name = {
            r.name: report.stream_figures(
                r, hittable, calls_without_cache=len(none.hits), cost_all=cost_all
            )
            for r in results
        }
        semcache = by_name["semcache"]
        figures.update(
            requests=semcache["requests"],
            hit_rate=semcache["hit_rate"],
            precision=semcache["precision"],
            recall=semcache["recall"],
            semcache=semcache,
            baselines={name: f for name, f in by_name.items() if name != "semcache"},
            simulation={
                "latency_median_ms": simulation.latency_median_ms,
                "price_in_per_1k": simulation.price.input_per_1k,
                "price_out_per_1k": simulation.price.output_per_1k,
            },
            hit_rate_by_tenth=_by_tenth(results[0].hits),
            notes=notes,
            split=options.split,
        )
        table = report.print_stream_table(by_name)
        if options.max_error_rate is not None:
            bounded = report.bounded_stream_figures(results[-1], options.max_error_rate, fixed)
            figures["error_bound"] = bounded
            table += "\n\n" + report.print_bounded_stream(bounded)
        plots = report.plot_stream(options.out, results)
    figures["seconds"] = round(time.time() - started, 1)
    path = report.write_json(options.out, figures)
    print(table)
    for note in figures.get("notes", []):
        print(note)
    print(f"figures: {path}" + "".join(f"\nplot: {p}" for p in plots))
    return figures


def _by_tenth(hits: list[bool]) -> list[float]:
    n = len(hits)
    tenths = []
    for k in range(10):
        part = hits[k * n // 10 : (k + 1) * n // 10]
        tenths.append(round(sum(part) / len(part), 4) if part else 0.0)
    return tenths
