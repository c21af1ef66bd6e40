"""What is served and what is not, with the real model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from semcache import CacheRequest, Reason, SemanticCache
from semcache.embedding import Reading
from semcache.evaluation import PairRow, metrics_at_defaults, run_pairs
from tests.conftest import DATA, CountingEmbedder


def test_paraphrase_is_served_with_its_score(cache: SemanticCache) -> None:
    entry_id = cache.put("What is the capital of France?", "Paris.")
    hit = cache.get("What's the capital city of France?")
    assert hit is not None
    assert (hit.response, hit.entry_id, hit.reason) == ("Paris.", entry_id, Reason.SEMANTIC)
    assert hit.prompt == "What is the capital of France?"
    assert cache.min_similarity <= hit.score < 1.0


def test_unrelated_question_misses_and_says_why(cache: SemanticCache) -> None:
    cache.put("What is the capital of France?", "Paris.")
    decision = cache.lookup(CacheRequest(prompt="How do I bake sourdough bread?"))
    assert decision.hit is None
    assert decision.reason is Reason.BELOW_THRESHOLD
    assert decision.score is not None and decision.score < 0.5


def test_exact_tier_answers_without_embedding(
    cache: SemanticCache, embedder: CountingEmbedder
) -> None:
    cache.put("What is the capital of France?", "Paris.")
    calls = len(embedder.calls)
    hit = cache.get("  what is the capital of   FRANCE ")
    assert hit is not None and hit.reason is Reason.EXACT and hit.score == 1.0
    assert len(embedder.calls) == calls


def test_empty_scope_misses_without_embedding(
    cache: SemanticCache, embedder: CountingEmbedder
) -> None:
    decision = cache.lookup(CacheRequest(prompt="anything at all"))
    assert decision.reason is Reason.EMPTY_SCOPE
    assert embedder.calls == []


def test_namespaces_never_share_entries(cache: SemanticCache) -> None:
    cache.put("What is the capital of France?", "Paris, for tenant A.", namespace="tenant-a")
    assert cache.get("What is the capital of France?", namespace="tenant-b") is None
    assert cache.get("What's the capital city of France?", namespace="tenant-b") is None
    hit = cache.get("What's the capital city of France?", namespace="tenant-a")
    assert hit is not None and hit.namespace == "tenant-a"


def test_context_is_part_of_the_scope(cache: SemanticCache) -> None:
    gpt4 = {"model": "gpt-4o", "temperature": 0}
    cache.put("What is the capital of France?", "Paris.", context=gpt4)
    assert cache.get("What is the capital of France?", context={"model": "gpt-4o-mini"}) is None
    assert cache.get("What is the capital of France?") is None
    # Key order and 0 against 0.0 do not change the scope.
    same = {"temperature": 0.0, "model": "gpt-4o"}
    assert cache.get("What is the capital of France?", context=same) is not None


GUARDED = [
    ("Is 7 a prime number?", "Is 9 a prime number?", Reason.NUMBER_MISMATCH),
    (
        "How many calories are in 100 grams of rice?",
        "How many calories are in 200 grams of rice?",
        Reason.NUMBER_MISMATCH,
    ),
    (
        "Can I take ibuprofen with coffee?",
        "Can't I take ibuprofen with coffee?",
        Reason.NEGATION_MISMATCH,
    ),
    (
        "Should I use tabs for indentation in Python?",
        "Should I not use tabs for indentation in Python?",
        Reason.NEGATION_MISMATCH,
    ),
    (
        "Cheap flights from Boston to Denver",
        "Cheap flights from Denver to Boston",
        Reason.ENTITY_MISMATCH,
    ),
    (
        "How do I say 'good morning' in Spanish?",
        "How do I say 'good night' in Spanish?",
        Reason.QUOTE_MISMATCH,
    ),
]


@pytest.mark.parametrize(("stored", "query", "reason"), GUARDED)
def test_guards_refuse_close_but_different_questions(
    cache: SemanticCache, stored: str, query: str, reason: Reason
) -> None:
    cache.put(stored, "the answer to: " + stored)
    decision = cache.lookup(CacheRequest(prompt=query, min_similarity=0.5))
    assert decision.hit is None
    assert decision.reason is reason
    assert decision.score is not None and decision.score >= 0.5


def test_guard_skips_to_a_candidate_that_passes(cache: SemanticCache) -> None:
    cache.put("Is 7 a prime number?", "Yes.")
    cache.put("Is nine a prime number?", "No, 9 = 3 × 3.")
    hit = cache.get("Is 9 a prime number?", min_similarity=0.7)
    assert hit is not None and hit.response == "No, 9 = 3 × 3."


def test_lower_thresholds_per_lookup(cache: SemanticCache) -> None:
    cache.put("How do I reset my password?", "Use the 'forgot password' link.")
    query = "I forgot my login credentials, what should I do?"
    decision = cache.lookup(CacheRequest(prompt=query))
    assert decision.hit is None and decision.score is not None
    looser = CacheRequest(prompt=query, min_similarity=decision.score - 0.01)
    verified = cache.lookup(looser)
    # Past the floor the candidate meets the verifier, which doubts it ...
    assert verified.hit is None and verified.reason is Reason.UNVERIFIED
    assert verified.confidence is not None and verified.confidence < cache.min_confidence
    # ... unless the caller accepts that doubt too.
    trusting = CacheRequest(
        prompt=query, min_similarity=decision.score - 0.01, min_confidence=verified.confidence
    )
    hit = cache.lookup(trusting).hit
    assert hit is not None and hit.confidence == pytest.approx(verified.confidence)


def test_prompt_longer_than_the_model_window_is_exact_only(cache: SemanticCache) -> None:
    document = " ".join(f"word{i}" for i in range(400))
    cache.put(document + " Summarise this.", "summary")
    assert cache.get(document + " Summarise this.") is not None
    decision = cache.lookup(CacheRequest(prompt=document + " Translate this."))
    assert decision.hit is None and decision.reason is Reason.EMPTY_SCOPE
    cache.put("a short question", "a short answer")
    decision = cache.lookup(CacheRequest(prompt=document + " Translate this."))
    assert decision.reason is Reason.PROMPT_TOO_LONG


class ReadLengths(CountingEmbedder):
    """Records the length of every text the model is asked to read."""

    def __init__(self, inner: CountingEmbedder) -> None:
        super().__init__(inner.inner)
        self.read_lengths: list[int] = []

    def read(self, texts: Sequence[str]) -> list[Reading]:
        self.read_lengths += [len(t) for t in texts]
        return self.inner.read(texts)


def test_a_prompt_of_megabytes_is_read_only_as_far_as_the_window(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    """Reading a whole 2 MB prompt (tokenizing it, then walking every token in Python) took
    seconds and held the interpreter; past the model's window the rest cannot change the
    verdict: the prompt is too long, and is stored and answered by the exact tier alone."""
    reader = ReadLengths(embedder)
    document = " ".join(f"word{i % 977}" for i in range(300_000))  # 2.4 MB, 900,000 tokens
    with SemanticCache(tmp_path / "c", embedder=reader) as cache:
        cache.put("a short question", "a short answer")
        decision = cache.lookup(CacheRequest(prompt=document + " Translate this."))
        assert decision.reason is Reason.PROMPT_TOO_LONG
        cache.put(document + " Summarise this.", "summary")
        assert cache.get(document + " Summarise this.") is not None
        assert cache.lookup(CacheRequest(prompt=document + " Summarise that.")).hit is None
    window = reader.max_tokens
    assert reader.read_lengths and max(reader.read_lengths) <= window * 101


def test_put_many_and_get_many_embed_in_one_call(
    cache: SemanticCache, embedder: CountingEmbedder
) -> None:
    prompts = ["How do I learn Python?", "What is the boiling point of water?", "Who wrote Hamlet?"]
    ids = cache.put_many(prompts, ["Practice.", "100 °C at sea level.", "Shakespeare."])
    assert len(set(ids)) == 3 and embedder.calls == [3]
    hits = cache.get_many(
        ["What's the best way to learn Python?", "Who is the author of Hamlet?", "Tell me a joke"]
    )
    assert embedder.calls == [3, 3]
    assert hits[0] is not None and hits[0].response == "Practice."
    assert hits[1] is not None and hits[1].response == "Shakespeare."
    assert hits[2] is None


def test_same_prompt_replaces_the_entry(cache: SemanticCache) -> None:
    first = cache.put("What is the capital of France?", "old answer")
    second = cache.put("what is the capital of france", "new answer")
    assert first != second and len(cache) == 1
    assert cache.entry(first) is None
    hit = cache.get("What is the capital of France?")
    assert hit is not None and hit.response == "new answer"


def test_responses_are_any_json_value(cache: SemanticCache) -> None:
    response = {"choices": [{"message": {"content": "Paris"}}], "usage": {"total_tokens": 9}}
    cache.put("What is the capital of France?", response)
    hit = cache.get("What is the capital of France?")
    assert hit is not None and hit.response == response


def test_precision_on_held_out_qqp_sample(tmp_path: Path, embedder: CountingEmbedder) -> None:
    """A regression guard on real labelled pairs the default was not tuned on.

    Measured at the time of writing, with the default verifier: 60 hits, 52 right (precision
    0.87, 0.90 of judged hits), recall 0.40 (qqp-mlp-v1: 61 hits, 52 right); by similarity
    alone at 0.85 it was 83 hits, 68 right (0.82), recall 0.53. The bounds leave room for a
    different BLAS, not for a broken guard, verifier or threshold.
    """
    rows = [
        PairRow(a=r["a"], b=r["b"], duplicate=r["duplicate"], id=r["id"])
        for r in map(orjson.loads, (DATA / "qqp_test_sample.jsonl").read_bytes().splitlines())
    ]
    with SemanticCache(tmp_path / "qqp", embedder=embedder) as cache:
        assert cache.verifier is not None and cache.verifier.name == "multi-mlp-v2"
        outcomes = run_pairs(cache, rows, floor=cache.min_similarity)
        metrics = metrics_at_defaults(cache, outcomes, rows)
    assert metrics.precision >= 0.8
    assert metrics.recall >= 0.35


def test_rephrased_statements_hit_on_held_out_rows(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    """Traffic that is not Quora questions: the held-out rows of GPTCache's rephrasings of
    documentation sentences (every pair a paraphrase), which the verifier never read.

    Measured at the time of writing: 65 of 100 served, all right; qqp-mlp-v1, which learnt
    Quora's questions only, served 56 (and 55 before the guards let "without" and "not",
    "one" and "a single" stand for each other)."""
    rows = [
        PairRow(a=r["a"], b=r["b"], duplicate=r["duplicate"], id=r["id"])
        for r in map(
            orjson.loads, (DATA / "rephrasings_test_sample.jsonl").read_bytes().splitlines()
        )
    ]
    with SemanticCache(tmp_path / "docs", embedder=embedder) as cache:
        metrics = metrics_at_defaults(
            cache, run_pairs(cache, rows, floor=cache.min_similarity), rows
        )
    assert metrics.precision >= 0.95
    assert metrics.recall >= 0.6


def test_a_miss_is_stored_without_embedding_its_prompt_again(
    cache: SemanticCache, embedder: CountingEmbedder
) -> None:
    cache.put("What is the capital of France?", "Paris.")
    assert cache.get("How tall is the Eiffel Tower?") is None
    calls = len(embedder.calls)
    cache.put("How tall is the Eiffel Tower?", "330 m.")
    assert len(embedder.calls) == calls
