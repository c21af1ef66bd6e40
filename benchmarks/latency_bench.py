"""Benchmark of the library's lookup latency against GPTCache's, same model, same run.

    python benchmarks/latency_bench.py [--data ../shared/data] [--entries 10000] [--rounds 3]

Each cache holds the same ``--entries`` QQP questions; in each round each looks up the same
300 other QQP questions, new to it, one at a time on one thread (most miss: the full semantic
path, the slow one).
Rounds are interleaved (semcache on ONNX, semcache on torch, GPTCache, the models alone) and
the medians of the per-round p50s are printed with their ratios, and written to
benchmarks/results/latency_bench.txt. GPTCache 0.1.44 runs as it ships (sqlite + FAISS, its
SBERT embedding of the same all-MiniLM-L6-v2 weights, on torch); torch runs on one thread in
every case, as semcache sets it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semcache import SemanticCache, SentenceTransformerEmbedder  # noqa: E402
from semcache.bench.gptcache_baseline import GPTCacheBaseline, available  # noqa: E402
from semcache.onnx_embedding import OnnxEmbedder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "latency_bench.txt"
lines: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def p50_ms(call: Callable[[str], Any], prompts: Sequence[str]) -> float:
    times = []
    for prompt in prompts:
        started = time.perf_counter()
        call(prompt)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not available():
        sys.exit("GPTCache is not installed: pip install -e '.[gptcache]'")
    texts: list[str] = []
    with (args.data / "clusters_qqp_gptcache.jsonl").open() as file:
        for line in file:
            texts.append(json.loads(line)["text"])
            if len(texts) >= args.entries + 300 * (args.rounds + 1):
                break
    # Each round asks prompts of its own: nothing is answered from a memo of recent vectors.
    stored, asked = texts[: args.entries], texts[args.entries :]
    per_round = [asked[300 * (r + 1) : 300 * (r + 2)] for r in range(args.rounds)]
    answers = [f"answer {i}" for i in range(len(stored))]
    say(f"# lookup latency, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, one thread")
    say(f"# {len(stored):,} entries, 300 new lookups per round, {args.rounds} rounds")
    import torch

    torch.set_num_threads(1)
    onnx, torch_model = OnnxEmbedder(), SentenceTransformerEmbedder()
    folder = Path(tempfile.mkdtemp(prefix="semcache-latency-"))
    on_onnx = SemanticCache(folder / "onnx", embedder=onnx)
    on_torch = SemanticCache(folder / "torch", embedder=torch_model)
    started = time.perf_counter()
    vectors = onnx.embed(stored)
    on_onnx.put_many(stored, answers)
    on_torch.put_many(stored, answers)
    gptcache = GPTCacheBaseline()
    gptcache.put_many(stored, answers)
    say(f"# filled in {time.perf_counter() - started:.0f} s ({vectors.shape[0]:,} vectors)")
    say()
    contenders: dict[str, Callable[[str], Any]] = {
        "semcache get, onnx": on_onnx.get,
        "semcache get, torch": on_torch.get,
        "GPTCache get (torch)": gptcache.get,
        "model alone, onnx": lambda t: onnx.embed([t]),
        "model alone, torch": lambda t: torch_model.embed([t]),
    }
    for call in contenders.values():  # warm every path (prompts no round asks)
        for prompt in asked[:20]:
            call(prompt)
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    for prompts in per_round:
        for name, call in contenders.items():
            rounds[name].append(p50_ms(call, prompts))
    median = {name: statistics.median(values) for name, values in rounds.items()}
    say(f"{'path':<22} | {'p50 ms':>7} | {'rounds':<20} | {'rest ms':>7} | {'/ GPTCache':>10}")
    say("-" * 78)
    model_of = {"onnx": median["model alone, onnx"], "torch": median["model alone, torch"]}
    for name, value in median.items():
        backend = "onnx" if "onnx" in name else "torch"
        rest = f"{value - model_of[backend]:.2f}" if "get" in name else ""
        ratio = value / median["GPTCache get (torch)"]
        shown = ", ".join(f"{v:.2f}" for v in rounds[name])
        say(f"{name:<22} | {value:>7.2f} | {shown:<20} | {rest:>7} | {ratio:>10.2f}")
    say("(rest: the get's p50 less its model's p50 for one text)")
    on_onnx.close()
    on_torch.close()
    gptcache.close()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
