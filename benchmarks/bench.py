"""The bench harness as a script: the same code as ``semcache bench``.

python benchmarks/bench.py ../shared/data/pairs_qqp_gptcache.jsonl --split test --out results/qqp
python benchmarks/bench.py ../shared/data/clusters_banking77.jsonl --split test --out results/b77
"""

import sys

from semcache.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
