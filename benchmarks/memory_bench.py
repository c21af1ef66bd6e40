"""Benchmark of memory per stored entry: the sidecar against the library doing the same work.

    python benchmarks/memory_bench.py [--data ../shared/data] [--misses 2000] [--steps 3]

The sidecar (its own process, against the fake upstream) is sent ``--misses`` new prompts per
step, then as many exact repeats; its resident memory is read from /proc after each. The
library, in another process, looks up and stores the same prompts. Printed side by side, and
written to benchmarks/results/memory_bench.txt: the growth per stored entry after the first
step (the first one also loads what is loaded once: the model, the verifier, the arenas).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sidecar_bench import (  # noqa: E402
    fake_upstream,
    free_port,
    load,
    running,
)

RESULTS = ROOT / "benchmarks" / "results" / "memory_bench_{}.txt"
lines: list[str] = []

LIBRARY = """
import json, sys, tempfile
from semcache import CacheRequest, SemanticCache
prompts = json.load(open(sys.argv[1]))
steps, size, backend = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
with tempfile.TemporaryDirectory() as folder, SemanticCache(
    folder, embedding_backend=backend
) as cache:
    cache.warm_up()
    print(rss(), flush=True)
    for step in range(steps):
        chunk = prompts[step * size:(step + 1) * size]
        for prompt in chunk:
            request = CacheRequest(prompt=prompt)
            if cache.lookup(request).hit is None:
                message = {"role": "assistant", "content": "Answer to: " + prompt}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                cache.store(request, {"object": "chat.completion", "choices": [choice]})
        for prompt in chunk:
            cache.lookup(CacheRequest(prompt=prompt))
        print(rss(), flush=True)
"""


def say(text: str = "") -> None:
    print(text, flush=True)
    lines.append(text)


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--misses", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    args = parser.parse_args()
    banking = (args.data / "clusters_banking77.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in banking]
    total = args.misses * args.steps
    prompts = [f"{texts[i % len(texts)]} (case {i})" for i in range(total)]
    say(
        f"# memory per entry, {time.strftime('%Y-%m-%d')}, {args.misses} new prompts per step, "
        f"{args.backend} backend"
    )
    sidecar_rss: list[int] = []
    with fake_upstream(0.0) as upstream, tempfile.TemporaryDirectory() as cache_dir:
        port = free_port()
        command = [
            sys.executable, "-m", "semcache", "serve", "--port", str(port), "--upstream",
            upstream, "--cache-dir", cache_dir, "--log-level", "warning",
            "--embedding-backend", args.backend,
        ]  # fmt: skip
        with running(command, f"http://127.0.0.1:{port}/healthz") as process:
            url = f"http://127.0.0.1:{port}/v1"
            sidecar_rss.append(rss_of(process.pid))
            for step in range(args.steps):
                chunk = prompts[step * args.misses : (step + 1) * args.misses]
                asyncio.run(load(url, chunk, 8))  # new: misses, stored
                asyncio.run(load(url, chunk, 8))  # again: exact hits
                sidecar_rss.append(rss_of(process.pid))
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(prompts, file)
        file.flush()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                LIBRARY,
                file.name,
                str(args.steps),
                str(args.misses),
                args.backend,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        ).stdout
    library_rss = [int(v) for v in out.split()]
    say(f"{'after step':>10} | {'sidecar MiB':>11} | {'library MiB':>11}")
    say("-" * 40)
    for step, (s, lib) in enumerate(zip(sidecar_rss, library_rss, strict=True)):
        say(f"{step:>10} | {s / 2**20:>11.1f} | {lib / 2**20:>11.1f}")
    entries = args.misses * (args.steps - 1)
    sidecar_per = (sidecar_rss[-1] - sidecar_rss[1]) / entries
    library_per = (library_rss[-1] - library_rss[1]) / entries
    say(
        f"growth per stored entry after step 1: sidecar {sidecar_per / 1024:.1f} KiB, library "
        f"{library_per / 1024:.1f} KiB (ratio {sidecar_per / max(library_per, 1):.2f})"
    )
    results = Path(str(RESULTS).format(args.backend))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {results.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
