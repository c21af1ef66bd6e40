"""The second stage: verifier resolution, serving by confidence, artefacts, the order guard."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from numpy.typing import NDArray

from semcache import CacheRequest, Reason, SemanticCache
from semcache.config import CacheConfig
from semcache.errors import ConfigError, InvalidRequestError, ModelNotFoundError
from semcache.policy import guard_mismatch, swapped_order
from semcache.verification import (
    LEXICAL_FEATURES,
    PairVerifier,
    load_verifier,
    pair_features,
    resolve_verifier,
)
from tests.conftest import WordHashEmbedder


class TableVerifier:
    """Probabilities from a table of (query, candidate) pairs; 0 for any other pair."""

    name = "table"
    embedder = WordHashEmbedder.name
    min_similarity = 0.3
    min_confidence = 0.5

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls: list[int] = []

    def probabilities(
        self,
        queries: Sequence[str],
        candidates: Sequence[str],
        query_vectors: NDArray[np.float32],
        candidate_vectors: NDArray[np.float32],
    ) -> NDArray[np.float64]:
        assert query_vectors.shape == candidate_vectors.shape == (len(queries), 64)
        self.calls.append(len(queries))
        pairs = zip(queries, candidates, strict=True)
        return np.array([self.table.get(pair, 0.0) for pair in pairs])


@pytest.fixture
def verified(tmp_path: Path) -> tuple[SemanticCache, TableVerifier]:
    verifier = TableVerifier(
        {
            ("how do i reset my router password", "how do i reset my router"): 0.4,
            ("how do i reset my router password", "reset my router password how"): 0.9,
        }
    )
    return stocked_cache(tmp_path, verifier, CacheConfig(verify_top=2)), verifier


def stocked_cache(path: Path, verifier: TableVerifier, config: CacheConfig) -> SemanticCache:
    cache = SemanticCache(path, embedder=WordHashEmbedder(), verifier=verifier, config=config)
    cache.put_many(
        ["how do i reset my router", "reset my router password how", "bake bread"],
        ["A", "B", "C"],
    )
    return cache


def test_by_default_the_verifier_gates_the_nearest_candidate(tmp_path: Path) -> None:
    verifier = TableVerifier(
        {("how do i reset my router password", "how do i reset my router"): 0.4}
    )
    cache = stocked_cache(tmp_path, verifier, CacheConfig())
    decision = cache.lookup(CacheRequest(prompt="how do i reset my router password"))
    assert decision.hit is None and decision.reason is Reason.UNVERIFIED
    assert decision.confidence == 0.4  # the nearest, "A"; the farther "B" is never asked about
    assert verifier.calls == [1]
    lowered = CacheRequest(prompt="how do i reset my router password", min_confidence=0.3)
    assert (hit := cache.lookup(lowered).hit) is not None and hit.response == "A"
    cache.close()


@pytest.mark.parametrize(
    ("probability", "configured", "served"),
    [(0.4, 0.3, True), (0.4, 0.5, False), (0.7, 0.6, True), (0.7, 0.9, False)],
)
def test_the_configured_min_confidence_decides(
    tmp_path: Path, probability: float, configured: float, served: bool
) -> None:
    """The cache's own min_confidence, not the verifier's default (0.5 here), is the operating
    point: it was ignored unless each request carried one."""
    verifier = TableVerifier(
        {("how do i reset my router password", "how do i reset my router"): probability}
    )
    cache = stocked_cache(tmp_path, verifier, CacheConfig(min_confidence=configured))
    decision = cache.lookup(CacheRequest(prompt="how do i reset my router password"))
    assert (decision.hit is not None) is served
    assert cache.min_confidence == configured
    cache.close()


def test_with_verify_top_the_most_probable_candidate_is_served_not_the_most_similar(
    verified: tuple[SemanticCache, TableVerifier],
) -> None:
    cache, verifier = verified
    decision = cache.lookup(CacheRequest(prompt="how do i reset my router password"))
    assert decision.hit is not None and decision.hit.response == "B"
    assert decision.confidence == decision.hit.confidence == 0.9
    assert verifier.calls == [2]  # both candidates above the floor, in one call
    assert cache.min_similarity == 0.3 and cache.min_confidence == 0.5
    cache.close()


def test_below_min_confidence_is_a_miss_that_says_why(
    verified: tuple[SemanticCache, TableVerifier],
) -> None:
    cache, _ = verified
    request = CacheRequest(prompt="how do i reset my router password", min_confidence=0.95)
    decision = cache.lookup(request)
    assert decision.hit is None
    assert decision.reason is Reason.UNVERIFIED
    assert decision.confidence == 0.9 and decision.entry_id is not None
    lowered = CacheRequest(prompt="how do i reset my router password", min_confidence=0.3)
    assert cache.lookup(lowered).hit is not None
    cache.close()


def test_a_batch_of_lookups_makes_one_verifier_call(
    verified: tuple[SemanticCache, TableVerifier],
) -> None:
    cache, verifier = verified
    requests = [
        CacheRequest(prompt="how do i reset my router password"),
        CacheRequest(prompt="how to bake bread"),
        CacheRequest(prompt="how do i reset my router quickly"),
    ]
    decisions = cache.lookup_many(requests)
    assert [d.hit.response if d.hit else None for d in decisions] == ["B", None, None]
    assert decisions[1].reason is Reason.UNVERIFIED  # "bake bread" is close, but unverified
    assert len(verifier.calls) == 1
    assert cache.stats()["outcomes"]["below_min_confidence"] == 2
    cache.close()


def test_exact_hits_are_not_verified(verified: tuple[SemanticCache, TableVerifier]) -> None:
    cache, verifier = verified
    hit = cache.get("How do I reset my router?")
    assert hit is not None and hit.reason is Reason.EXACT and hit.confidence is None
    assert verifier.calls == []
    cache.close()


def test_min_confidence_is_validated() -> None:
    with pytest.raises(InvalidRequestError, match="min_confidence"):
        CacheRequest(prompt="x", min_confidence=1.5)
    with pytest.raises(ConfigError, match="min_confidence"):
        SemanticCache("/nonexistent/never-created", min_confidence=-0.1)


def test_auto_uses_no_verifier_for_another_embedding_model(tmp_path: Path) -> None:
    assert resolve_verifier("auto", "word-hash-64", tmp_path) is None
    assert resolve_verifier(None, "all-MiniLM-L6-v2", tmp_path) is None
    assert resolve_verifier("none", "all-MiniLM-L6-v2", tmp_path) is None
    with SemanticCache(tmp_path / "c", embedder=WordHashEmbedder()) as cache:
        assert cache.verifier is None and cache.min_confidence is None
        assert cache.min_similarity == 0.85


def test_a_named_verifier_must_exist_and_match_the_embedder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        resolve_verifier("no-such-verifier", "word-hash-64", tmp_path)
    path = tmp_path / "verifier" / "tiny.npz"
    _tiny_verifier().save(path)
    assert resolve_verifier("tiny", "word-hash-64", tmp_path) is not None
    with pytest.raises(ConfigError, match="trained behind"):
        resolve_verifier(str(path), "all-MiniLM-L6-v2", tmp_path)


def _tiny_verifier() -> PairVerifier:
    width = 2 * 64 + 1 + len(LEXICAL_FEATURES)
    rng = np.random.default_rng(0)
    return PairVerifier(
        name="tiny",
        embedder="word-hash-64",
        weights=[rng.standard_normal((width, 4)).astype(np.float32), np.ones((4, 1), np.float32)],
        biases=[np.zeros(4, np.float32), np.zeros(1, np.float32)],
        mean=np.zeros(width, np.float32),
        scale=np.ones(width, np.float32),
        platt=(0.5, -1.0),
        min_similarity=0.4,
        min_confidence=0.6,
    )


def test_pair_verifier_round_trips_and_gives_probabilities(tmp_path: Path) -> None:
    verifier = _tiny_verifier()
    path = tmp_path / "tiny.npz"
    verifier.save(path, card={"data": "none"})
    loaded = load_verifier(path)
    assert (loaded.name, loaded.min_similarity, loaded.min_confidence) == ("tiny", 0.4, 0.6)
    embed = WordHashEmbedder().embed
    queries, candidates = ["is rust faster than go", "a b c"], ["is go faster than rust", "a b"]
    ours = verifier.probabilities(queries, candidates, embed(queries), embed(candidates))
    theirs = loaded.probabilities(queries, candidates, embed(queries), embed(candidates))
    assert np.allclose(ours, theirs) and np.all((ours > 0) & (ours < 1))
    features = pair_features(queries, candidates, embed(queries), embed(candidates))
    assert features[0, -1] == 1.0  # swapped_order is the last lexical feature
    assert path.with_suffix(".json").is_file()


def test_a_damaged_artefact_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="not a verifier artefact"):
        load_verifier(path)
    folder = tmp_path / "cross"
    folder.mkdir()
    with pytest.raises(ModelNotFoundError):
        load_verifier(folder)
    (folder / "verifier.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a verifier card"):
        load_verifier(folder)


@pytest.mark.parametrize(
    ("query", "candidate", "swapped"),
    [
        ("flights from ny to fl", "cheap flights from fl to ny", True),
        ("is rust faster than go", "is go faster than rust", True),
        ("convert celsius to kelvin", "convert kelvin to celsius", True),
        ("how can i quickly learn python", "how can i learn python quickly", False),
        ("best way to learn python", "what is the best way to learn python", False),
        ("python or java: which is better?", "which is better, python or java?", False),
    ],
)
def test_order_guard(query: str, candidate: str, swapped: bool) -> None:
    assert swapped_order(query, candidate) is swapped
    assert (guard_mismatch(query, candidate) is Reason.ORDER_MISMATCH) is swapped


def test_a_cross_encoder_verifier_loads_offline_and_gives_probabilities(tmp_path: Path) -> None:
    """A tiny randomly initialised cross-encoder in the artefact layout train.py writes."""
    import orjson
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from semcache.embedding import resolve_model
    from semcache.verification import CrossEncoderVerifier

    _, base = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    card = {
        "name": "tiny-ce", "embedder": "word-hash-64", "platt": [1.0, 0.0],
        "min_similarity": 0.5, "min_confidence": 0.5, "max_pair_tokens": 32,
    }  # fmt: skip
    (tmp_path / "verifier.json").write_bytes(orjson.dumps(card))
    verifier = load_verifier(tmp_path)
    assert isinstance(verifier, CrossEncoderVerifier) and verifier.min_similarity == 0.5
    embed = WordHashEmbedder().embed
    queries, candidates = ["is it raining in paris", "x"], ["is it raining in rome", "y"]
    probabilities = verifier.probabilities(queries, candidates, embed(queries), embed(candidates))
    assert probabilities.shape == (2,) and np.all((probabilities > 0) & (probabilities < 1))
    with SemanticCache(tmp_path / "cache", embedder=WordHashEmbedder(), verifier=verifier) as c:
        c.put("is it raining in paris", "yes")
        decision = c.lookup(CacheRequest(prompt="is it raining in paris today", min_confidence=0))
        assert decision.hit is not None and decision.confidence is not None


def _training_script() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "models" / "verifier" / "train.py"
    spec = importlib.util.spec_from_file_location("verifier_train", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_an_ensemble_folds_into_one_network_whose_logit_is_the_members_mean() -> None:
    fold = _training_script().fold
    rng = np.random.default_rng(1)
    width, shapes = 12, [(12, 5), (5, 3), (3, 1)]
    members = [
        ([rng.standard_normal(s).astype(np.float32) for s in shapes],
         [rng.standard_normal(s[1]).astype(np.float32) for s in shapes])
        for _ in range(3)
    ]  # fmt: skip

    def network(
        weights: Sequence[NDArray[np.float32]], biases: Sequence[NDArray[np.float32]]
    ) -> PairVerifier:
        return PairVerifier(
            name="n", embedder="e", weights=weights, biases=biases,
            mean=np.zeros(width, np.float32), scale=np.ones(width, np.float32),
        )  # fmt: skip

    x = rng.standard_normal((7, width)).astype(np.float32)
    folded = network(*fold([m[0] for m in members], [m[1] for m in members]))
    expected = np.mean([network(*m).logits(x) for m in members], axis=0)
    assert [w.shape for w in folded.weights] == [(12, 15), (15, 9), (9, 1)]
    assert np.allclose(folded.logits(x), expected, atol=1e-5)
    single = fold([members[0][0]], [members[0][1]])
    assert np.allclose(network(*single).logits(x), network(*members[0]).logits(x))
