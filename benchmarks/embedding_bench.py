"""Benchmark of the embedding backends: torch (sentence-transformers) against ONNX Runtime.

    python benchmarks/embedding_bench.py [--data ../shared/data] [--pairs 2000]

Printed, and written to benchmarks/results/embedding_bench.txt, side by side in one run:

1. one text at a time (p50, the lookup of one request) and batches of 32 (texts/s, a loaded
   sidecar's micro-batches), for 1 and 2 threads per call;
2. padding: batches of 32 run as one pass padded to the longest text, against length-sorted
   sub-batches (what the ONNX backend does);
3. two calls at once from two threads, one thread each (what the sidecar does under load);
4. agreement: the lowest cosine between the two backends' vectors, and the hit decisions that
   change on QQP pairs (store every ``a``, look up every ``b``, verifier on).

Texts are the rephrasing prompts of ``pairs_gptcache_mock.jsonl`` (median ~29 tokens, a few
hundred long) and QQP questions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semcache import CacheRequest, SemanticCache, SentenceTransformerEmbedder  # noqa: E402
from semcache.onnx_embedding import MAX_SUB_BATCH, OnnxEmbedder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "embedding_bench.txt"
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


Embed = Callable[[Sequence[str]], NDArray[np.float32]]


def single_p50(embed: Embed, texts: Sequence[str]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        embed([text])
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50))


def batched(embed: Embed, texts: Sequence[str], size: int = 32) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), size):
        embed(texts[i : i + size])
    return len(texts) / (time.perf_counter() - started)


def two_at_once(embed: Embed, texts: Sequence[str], size: int = 32) -> float:
    halves = [texts[: len(texts) // 2], texts[len(texts) // 2 :]]
    threads = [threading.Thread(target=batched, args=(embed, half, size)) for half in halves]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(texts) / (time.perf_counter() - started)


def decisions(embedder: object, pairs: Sequence[dict[str, object]]) -> list[int | None]:
    with (
        tempfile.TemporaryDirectory() as folder,
        SemanticCache(folder, embedder=embedder) as cache,  # type: ignore[arg-type]
    ):
        ids = cache.put_many([str(p["a"]) for p in pairs], list(range(len(pairs))))
        where = {entry_id: i for i, entry_id in enumerate(ids)}
        found = cache.lookup_many([CacheRequest(prompt=str(p["b"])) for p in pairs])
        return [where.get(d.entry_id) if d.hit else None for d in found]  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    mock = [json.loads(line) for line in (args.data / "pairs_gptcache_mock.jsonl").open()]
    texts = [str(row["b"]) for row in mock][:640]
    qqp = [json.loads(line) for line in (args.data / "pairs_qqp_gptcache.jsonl").open()]
    pairs = qqp[-args.pairs :]
    say(f"# embedding backends, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    say(f"# {len(texts)} rephrasing prompts; medians of {args.rounds} interleaved rounds")
    say()
    import torch

    torch_model = SentenceTransformerEmbedder()
    onnx = {threads: OnnxEmbedder(threads=threads) for threads in (1, 2)}
    one_pass = OnnxEmbedder(threads=1, cells=10**9)  # padded to the longest of 32

    for model in (torch_model, one_pass, *onnx.values()):
        model.embed(texts[:64])
    rows: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows.setdefault(f"torch, {threads} thread(s)", []).append(
                (single_p50(torch_model.embed, texts[:100]), batched(torch_model.embed, texts))
            )
            model = onnx[threads]
            rows.setdefault(f"onnx, {threads} thread(s), sorted", []).append(
                (single_p50(model.embed, texts[:100]), batched(model.embed, texts))
            )
        rows.setdefault("onnx, 1 thread, one padded pass", []).append(
            (float("nan"), batched(one_pass.embed, texts))
        )
        rows.setdefault("onnx, 1 thread x 2 calls at once", []).append(
            (float("nan"), two_at_once(onnx[1].embed, texts))
        )
    torch.set_num_threads(1)
    say(f"{'backend':<36} | {'one text p50 ms':>15} | {'batch-32 texts/s':>16}")
    say("-" * 74)
    for label, values in rows.items():
        single = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        shown = "" if np.isnan(single) else f"{single:.2f}"
        say(f"{label:<36} | {shown:>15} | {rate:>16.0f}")
    say(f"(sub-batches: at most {MAX_SUB_BATCH} texts and 1024 padded tokens per pass)")
    say()
    sample = [str(p[k]) for p in pairs for k in ("a", "b")]
    a, b = onnx[1].embed(sample), torch_model.embed(sample)
    say(f"agreement on {len(sample)} QQP texts: lowest cosine {float((a * b).sum(1).min()):.6f}")
    by_onnx, by_torch = decisions(onnx[1], pairs), decisions(torch_model, pairs)
    changed = sum(1 for x, y in zip(by_onnx, by_torch, strict=True) if x != y)
    hits_onnx = sum(1 for x in by_onnx if x is not None)
    hits_torch = sum(1 for x in by_torch if x is not None)
    say(
        f"hit decisions on {len(pairs)} QQP pairs: {changed} changed "
        f"({hits_onnx} hits on onnx, {hits_torch} on torch)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
