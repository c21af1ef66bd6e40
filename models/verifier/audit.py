"""Read a sample of served hits by hand: how far the labels' precision is from the real one.

    python models/verifier/audit.py sample --out models/verifier/audit-class9.tsv
    # fill in each row's `reading`: same | different
    python models/verifier/audit.py score models/verifier/audit-class9.tsv

The sample is drawn from class 9 (rows with id % 10 == 9: the calibration class, never the
test split), replayed as the cache sees it (train.py): the hit the cache would serve for each
query with the default verifier, ``verify_top`` and min_confidence, drawn uniformly at random
with a fixed seed.

Reading rule, from the side of the user who asked ``query`` and would get the answer stored
for ``candidate``: *same* when that answer answers the query as asked (the candidate may ask
for more, e.g. "... and why?"); *different* when it answers another question: another aspect
or question word asking for other information ("When was X discovered?" / "How was X
discovered?"), a constraint the query lacks ("... in London"), or a query that asks for more
than the candidate ("What is X? What is it for?" / "What is X?").
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from collections import Counter
from pathlib import Path

from train import HERE, ROOT, mine

from semcache.embedding import SentenceTransformerEmbedder
from semcache.evaluation import Labels, PrecomputedEmbedder, load_pairs
from semcache.verification import DEFAULT_VERIFIER, load_verifier

FIELDS = ("confidence", "labels", "reading", "query", "candidate")
READINGS = ("same", "different")


def sample(args: argparse.Namespace) -> None:
    rows = [r for r in load_pairs(args.data / "pairs_qqp_gptcache.jsonl") if r.id % 10 != 0]
    labels = Labels(rows)
    embedder = PrecomputedEmbedder(SentenceTransformerEmbedder(), args.embedding_cache)
    verifier = load_verifier(args.verifier)
    group = [r for r in rows if r.id % 10 == args.cls]
    pairs = mine(group, embedder, labels, floor=verifier.min_similarity, verify_top=args.verify_top)
    queries, candidates = [p[0] for p in pairs], [p[1] for p in pairs]
    probabilities = verifier.probabilities(
        queries, candidates, embedder.embed(queries), embedder.embed(candidates)
    )
    best: dict[str, tuple[float, str, float]] = {}
    for (query, candidate, right, _), p in zip(pairs, probabilities.tolist(), strict=True):
        if query not in best or p > best[query][0]:
            best[query] = (p, candidate, right)
    served = sorted(
        (query, p, candidate, right)
        for query, (p, candidate, right) in best.items()
        if p >= verifier.min_confidence
    )
    chosen = random.Random(args.seed).sample(served, min(args.size, len(served)))
    with open(args.out, "w", newline="") as file:
        writer = csv.writer(file, delimiter="\t", lineterminator="\n")
        writer.writerow(FIELDS)
        for query, p, candidate, right in chosen:
            judged = labels.known(query, candidate)
            verdict = "right" if right else "labelled-negative" if judged else "unjudged"
            writer.writerow((f"{p:.3f}", verdict, "", query, candidate))
    print(
        f"{len(chosen)} of {len(served)} hits served by {verifier.name} on class {args.cls} "
        f"(min_confidence {verifier.min_confidence}) written to {args.out}"
    )


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion (Wilson score)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def score(args: argparse.Namespace) -> None:
    with open(args.file, newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    unread = [i + 2 for i, row in enumerate(rows) if row["reading"] not in READINGS]
    if unread:
        sys.exit(f"{args.file}: lines {unread[:10]} have no reading ({' | '.join(READINGS)})")
    n = len(rows)
    by_labels = Counter(row["labels"] for row in rows)
    table = Counter((row["labels"], row["reading"]) for row in rows)
    same = sum(row["reading"] == "same" for row in rows)
    right = by_labels["right"]
    judged = n - by_labels["unjudged"]

    def line(name: str, k: int, total: int) -> str:
        low, high = wilson(k, total)
        return f"{name:<34} {k:>4}/{total:<4} = {k / total:.3f}  (95% {low:.3f}-{high:.3f})"

    print(f"{n} served hits read by hand ({args.file})")
    print(line("precision by the labels", right, n))
    print(line("precision of labelled hits", right, judged))
    print(line("precision by reading", same, n))
    print()
    print(f"{'labels says':<20} {'read same':>10} {'read different':>15}")
    for verdict in ("right", "labelled-negative", "unjudged"):
        print(f"{verdict:<20} {table[verdict, 'same']:>10} {table[verdict, 'different']:>15}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    draw = commands.add_parser("sample", help="draw served hits to read")
    draw.add_argument("--out", type=Path, default=HERE / "audit-class9.tsv")
    draw.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    cache = ROOT / "benchmarks" / ".cache" / "qqp-embeddings.npz"
    draw.add_argument("--embedding-cache", type=Path, default=cache)
    draw.add_argument("--verifier", type=Path, default=HERE / f"{DEFAULT_VERIFIER}.npz")
    draw.add_argument("--cls", type=int, default=9, choices=range(1, 10), help="id % 10")
    draw.add_argument("--verify-top", type=int, default=1, help="as the cache's setting")
    draw.add_argument("--size", type=int, default=150)
    draw.add_argument("--seed", type=int, default=2026)
    draw.set_defaults(run=sample)
    read = commands.add_parser("score", help="figures of a read sample")
    read.add_argument("file", type=Path)
    read.set_defaults(run=score)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
