"""semcache in-process: store answers, get them back for paraphrases, see why a lookup missed.

make demo            (or: python examples/library_demo.py [CACHE_DIR])
"""

from __future__ import annotations

import sys
import tempfile
import time

from semcache import CacheRequest, SemanticCache


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="semcache-demo-")
    print(f"cache directory: {directory}")
    with SemanticCache(directory) as cache:
        cache.put_many(
            [
                "What is the capital of France?",
                "How do I reverse a list in Python?",
                "How many days are there in a leap year?",
            ],
            [
                "Paris.",
                "Use reversed(xs) for an iterator or xs[::-1] for a copy; xs.reverse() in place.",
                "366.",
            ],
            namespace="demo",
        )
        for question in [
            "what is the capital of france",  # exact tier: no embedding needed
            "What's the capital city of France?",  # paraphrase
            "What's the best way to reverse a Python list?",  # paraphrase
            "How many days are there in a normal year?",  # close, but a different question
            "What is the capital of Spain?",  # named entity differs
            "How do I bake bread?",  # unrelated
        ]:
            started = time.perf_counter()
            decision = cache.lookup(CacheRequest(prompt=question, namespace="demo"))
            elapsed_ms = (time.perf_counter() - started) * 1000
            score = "-" if decision.score is None else f"{decision.score:.3f}"
            answer = decision.hit.response if decision.hit else "(miss: ask the LLM)"
            print(
                f"{question!r:52} {decision.reason.value:18} score {score:>6} "
                f"{elapsed_ms:6.1f} ms  {answer}"
            )
        print("stats:", cache.stats())


if __name__ == "__main__":
    main()
