"""Expiry, eviction, deletion and bad input: the cache's bookkeeping, on the fast embedder."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from semcache import (
    CacheRequest,
    ConfigError,
    InvalidRequestError,
    SemanticCache,
)
from tests.conftest import FakeClock, WordHashEmbedder


def assert_consistent(cache: SemanticCache) -> None:
    """Index, catalog and store describe the same set of entries."""
    catalog_ids = {entry_id for entry_id, _ in cache._catalog.items()}
    store_ids = {
        entry.entry_id for entry in cache._store.scan() if not isinstance(entry, Exception)
    }
    assert catalog_ids == store_ids
    cache.wait_for_index()
    indexed: set[int] = set()
    for scope in cache._index._scopes.values():
        ids, _ = scope.index.contents()
        indexed.update(ids.tolist())
    assert indexed == catalog_ids
    assert cache._catalog.total_bytes == sum(
        cache._catalog.get(i).size
        for i in catalog_ids  # type: ignore[union-attr]
    )


def test_entries_expire_after_their_ttl(fast_cache: SemanticCache, clock: FakeClock) -> None:
    fast_cache.put("alpha beta gamma", "short-lived", ttl_s=10)
    fast_cache.put("delta epsilon zeta", "kept")
    clock.advance(9)
    assert fast_cache.get("alpha beta gamma") is not None
    clock.advance(2)
    assert fast_cache.get("alpha beta gamma") is None
    assert fast_cache.get("alpha beta gamma gamma", min_similarity=0.5) is None
    assert fast_cache.get("delta epsilon zeta") is not None
    assert len(fast_cache) == 1
    assert_consistent(fast_cache)


def test_default_ttl_and_sweep(tmp_path: Path, clock: FakeClock) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), clock=clock, ttl_s=5) as cache:
        cache.put_many([f"question number {i}" for i in range(10)], list(range(10)))
        clock.advance(6)
        assert cache.expire() == 10
        assert len(cache) == 0
        assert cache.stats()["expired"] == 10
        assert_consistent(cache)


def test_lru_eviction_by_count_keeps_index_and_store_together(tmp_path: Path) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), max_entries=5) as cache:
        ids = cache.put_many([f"topic {i} details" for i in range(5)], list(range(5)))
        assert cache.get("topic 0 details") is not None  # now the most recently used
        cache.put("a brand new question", "new")
        assert len(cache) == 5
        assert cache.entry(ids[1]) is None  # the least recently used went
        assert cache.entry(ids[0]) is not None
        assert cache.stats()["evicted"] == 1
        assert_consistent(cache)


def test_eviction_by_bytes(tmp_path: Path) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), max_bytes=20_000) as cache:
        for i in range(40):
            cache.put(f"question {i}", "x" * 1000)
        stats = cache.stats()
        assert stats["bytes"] <= 20_000 and stats["evicted"] > 0
        assert cache.get("question 39") is not None
        assert cache.get("question 0") is None
        assert_consistent(cache)
        with pytest.raises(InvalidRequestError, match="max_bytes"):
            cache.put("too big", "y" * 30_000)
        assert cache.get("question 39") is not None


def test_delete_and_clear(fast_cache: SemanticCache) -> None:
    a = fast_cache.put("one two three", 1, namespace="a")
    fast_cache.put("four five six", 2, namespace="a")
    fast_cache.put("one two three", 3, namespace="b")
    assert fast_cache.delete(a) is True
    assert fast_cache.delete(a) is False
    assert fast_cache.get("one two three", namespace="a") is None
    assert fast_cache.clear(namespace="a") == 1
    assert len(fast_cache) == 1
    hit = fast_cache.get("one two three", namespace="b")
    assert hit is not None and hit.response == 3
    assert fast_cache.clear() == 1
    assert len(fast_cache) == 0
    assert_consistent(fast_cache)


def test_scopes_move_to_ivf_and_back(tmp_path: Path) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), exact_index_max=200) as cache:
        ids = cache.put_many(
            [f"entry {i} about topic {i % 7}" for i in range(400)], list(range(400))
        )
        cache.wait_for_index()  # retrained beside the flat index, which served meanwhile
        assert cache.stats()["indexes"] == {"ivf": 1}
        hit = cache.get("entry 123 about topic 4")
        assert hit is not None and hit.response == 123
        for entry_id in ids[:350]:
            cache.delete(entry_id)
        cache.wait_for_index()
        assert cache.stats()["indexes"] == {"flat": 1}
        assert cache.get("entry 380 about topic 2") is not None
        assert_consistent(cache)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.put("", "x"), "prompt"),
        (lambda c: c.put("   \n", "x"), "prompt"),
        (lambda c: c.put(42, "x"), "prompt"),
        (lambda c: c.get(None), "prompt"),
        (lambda c: c.put("ok", {1, 2}), "response"),
        (lambda c: c.put("ok", "x", namespace=""), "namespace"),
        (lambda c: c.put("ok", "x", context={"t": float("nan")}), "context"),
        (lambda c: c.put("ok", "x", context=["not", "a", "mapping"]), "context"),
        (lambda c: c.put("ok", "x", ttl_s=-1), None),
        (lambda c: c.get("ok", min_similarity=1.5), None),
        (lambda c: c.put_many(["a", ""], ["x", "y"]), "prompts[1]"),
        (lambda c: c.put_many("abc", ["x"]), "prompts"),
        (lambda c: c.put_many(["a"], ["x", "y"]), "responses"),
    ],
)
def test_bad_input_raises_a_typed_error_and_keeps_what_is_stored(
    fast_cache: SemanticCache, call: object, field: str | None
) -> None:
    fast_cache.put("kept question", "kept")
    with pytest.raises(InvalidRequestError) as info:
        call(fast_cache)  # type: ignore[operator]
    assert info.value.field == field
    assert len(fast_cache) == 1
    assert fast_cache.get("kept question") is not None


def test_bad_options_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid options are"):
        SemanticCache(tmp_path, embedder=WordHashEmbedder(), min_similarty=0.9)
    with pytest.raises(ConfigError, match=r"min_similarity must be a number in \(0, 1\]"):
        SemanticCache(tmp_path, embedder=WordHashEmbedder(), min_similarity=0)
    with pytest.raises(ConfigError, match="max_entries"):
        SemanticCache(tmp_path, embedder=WordHashEmbedder(), max_entries=0)
    # The failed opens released the directory.
    SemanticCache(tmp_path, embedder=WordHashEmbedder()).close()


def test_closed_cache_refuses_work(tmp_path: Path) -> None:
    cache = SemanticCache(tmp_path, embedder=WordHashEmbedder())
    cache.close()
    cache.close()
    with pytest.raises(Exception, match="closed"):
        cache.put("a", "b")


def test_bad_embedder_output_is_an_error_not_a_corrupt_index(tmp_path: Path) -> None:
    class Broken(WordHashEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            return np.zeros((len(texts), self.dim), np.float32)

    with (
        SemanticCache(tmp_path, embedder=Broken()) as cache,
        pytest.raises(Exception, match="zero or NaN"),
    ):
        cache.put("alpha beta", "b")


async def test_awaitable_forms_run_off_the_loop(fast_cache: SemanticCache) -> None:
    ids = await fast_cache.aput_many(["red green blue", "cyan magenta"], [1, 2])
    hits = await asyncio.gather(*(fast_cache.aget("red green blue") for _ in range(20)))
    assert all(h is not None and h.entry_id == ids[0] for h in hits)
    decision = await fast_cache.alookup(CacheRequest(prompt="cyan magenta", namespace="default"))
    assert decision.hit is not None and decision.hit.response == 2
    assert await fast_cache.adelete(ids[0]) is True
    assert await fast_cache.aclear() == 1


def test_stats_count_outcomes(fast_cache: SemanticCache) -> None:
    fast_cache.put("one two three", 1)
    fast_cache.get("one two three")
    fast_cache.get("nine ten eleven")
    stats = fast_cache.stats()
    assert stats["entries"] == 1 and stats["lookups"] == 2 and stats["hits"] == 1
    assert stats["outcomes"] == {"exact": 1, "below_threshold": 1}


def test_concurrent_puts_gets_and_deletes_keep_the_cache_consistent(tmp_path: Path) -> None:
    with SemanticCache(
        tmp_path, embedder=WordHashEmbedder(), exact_index_max=300, max_entries=800
    ) as cache:
        errors: list[BaseException] = []

        def writer(worker: int) -> None:
            try:
                for i in range(150):
                    ids = cache.put_many(
                        [f"w{worker} item{i} part{j}" for j in range(3)], [worker, i, 0]
                    )
                    if i % 10 == 0:
                        cache.delete(ids[0])
            except BaseException as exc:  # surfaced below: a thread's failure fails the test
                errors.append(exc)

        def reader(worker: int) -> None:
            try:
                for i in range(300):
                    prompt = f"w{worker % 2} item{i % 150} part1"
                    hit = cache.get(prompt, min_similarity=0.99)
                    assert hit is None or hit.prompt == prompt
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        threads += [threading.Thread(target=reader, args=(w,)) for w in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(cache) <= 800
        assert_consistent(cache)


def test_an_entry_stored_without_embedding_is_answered_by_the_exact_tier_only(
    tmp_path: Path,
) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), verifier=None) as cache:
        cache.put("a first question about rivers", 0)  # a scope with an index
        request = CacheRequest(prompt="the longest river in Africa")
        cache.store(request, "the Nile", embed=False)
        assert cache.get("the longest river in Africa") is not None
        assert cache.get("the longest river in Africa please", min_similarity=0.5) is None
        assert len(cache) == 2 and len(cache._index) == 1  # kept, but not in the index
