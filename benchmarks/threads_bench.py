"""How many threads one lookup should use, on a quiet and on a busy machine.

    python benchmarks/threads_bench.py [--lookups 150]

torch and FAISS default to one thread per core. On a 2-core host that is also serving requests,
running other processes or other lookups, those threads fight for the cores and a single lookup
stalls. Each configuration runs in a fresh process (both settings are process-wide): the cache is
filled with the `a` questions of tests/data/qqp_test_sample.jsonl, then their `b` paraphrases
are looked up one at a time, end to end (tokenise, embed, search, guards, verifier). "busy"
runs one spinning process per core beside it. Printed, and written to
benchmarks/results/threads_bench.txt: lookup p50 and p95 per thread count, quiet and busy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "tests" / "data" / "qqp_test_sample.jsonl"
RESULTS = HERE / "results" / "threads_bench.txt"


def child(threads: str, lookups: int) -> None:
    import numpy as np

    from semcache import SemanticCache
    from semcache.keys import CacheRequest

    pairs = [json.loads(line) for line in DATA.read_text().splitlines()]
    with tempfile.TemporaryDirectory() as directory:
        chosen = None if threads == "default" else int(threads)
        with SemanticCache(directory, threads=chosen) as cache:
            cache.put_many([p["a"] for p in pairs], [p["id"] for p in pairs])
            cache.lookup(CacheRequest(prompt="warm up the whole path"))
            times = []
            for pair in pairs[:lookups]:
                started = time.perf_counter()
                cache.lookup(CacheRequest(prompt=pair["b"]))
                times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    print(json.dumps({"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))}))


def measure(threads: str, busy: bool, lookups: int) -> dict[str, float]:
    spinners = []
    if busy:
        spinners = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)
        ]
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", threads, "--lookups", str(lookups)],
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=150)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.lookups)
        return
    lines = [
        f"lookup latency by thread count, {args.lookups} semantic lookups, "
        f"{os.cpu_count()} cores; busy = one spinning process per core beside it",
        f"{'threads':<22}{'quiet p50':>11}{'quiet p95':>11}{'busy p50':>11}{'busy p95':>11}",
    ]
    print("\n".join(lines), flush=True)
    for threads in ("default", "1", "2"):
        quiet = measure(threads, False, args.lookups)
        busy = measure(threads, True, args.lookups)
        label = f"{threads} (one per core)" if threads == "default" else threads
        line = (
            f"{label:<22}{quiet['p50']:>9.1f}ms{quiet['p95']:>9.1f}ms"
            f"{busy['p50']:>9.1f}ms{busy['p95']:>9.1f}ms"
        )
        print(line, flush=True)
        lines.append(line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
