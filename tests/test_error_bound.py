"""max_error_rate: hits served only where labelled candidates show the error within the bound."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcache import CacheRequest, ConfigError, SemanticCache
from semcache.config import CacheConfig
from semcache.decision import Decision
from semcache.error_bound import ErrorBound, wilson_upper
from semcache.onnx_embedding import OnnxEmbedder
from semcache.policy import Reason
from semcache.server.state import STATE
from tests.conftest import CountingEmbedder
from tests.fake_openai import FakeOpenAI
from tests.sidecar import ask, start_sidecar

STORED = "What is the tallest mountain in the world?"
ASKED = "Which mountain is the tallest in the world?"


def test_without_labels_nothing_is_served() -> None:
    bound = ErrorBound(0.02)
    assert bound.threshold("default") == math.inf
    assert not bound.allows("default", 0.999)


def test_the_threshold_falls_as_right_answers_are_seen_and_rises_with_wrong_ones() -> None:
    bound = ErrorBound(0.05)
    for _ in range(40):
        bound.record("default", 0.95, wrong=False)
    assert not bound.allows("default", 0.95)  # 40 right of 40 is not yet 95% sure of <5%
    for _ in range(60):
        bound.record("default", 0.95, wrong=False)
    assert bound.allows("default", 0.95) and not bound.allows("default", 0.90)
    for _ in range(200):
        bound.record("default", 0.70, wrong=False)
    assert bound.allows("default", 0.70)
    for _ in range(30):
        bound.record("default", 0.70, wrong=True)
    assert not bound.allows("default", 0.70) and bound.allows("default", 0.95)
    assert bound.threshold("other") == math.inf  # namespaces learn apart


def test_past_enough_labels_a_share_of_candidates_is_labelled() -> None:
    bound = ErrorBound(0.05)
    assert bound.label_share("n") == 1.0
    for _ in range(2000):
        bound.record("n", 0.9, wrong=False)
    assert bound.label_share("n") == 1.0
    bound.record("n", 0.9, wrong=False, weight=2000)  # as a sample at one in 2000 would
    assert bound.label_share("n") == pytest.approx(0.5, rel=1e-3)
    bound.record("n", 0.9, wrong=False, weight=100_000)
    assert bound.label_share("n") == 0.05 and bound.label_share("other") == 1.0


def test_a_weighted_label_is_not_as_sure_as_that_many_labels() -> None:
    many, few = ErrorBound(0.05), ErrorBound(0.05)
    for _ in range(150):
        many.record("n", 0.9, wrong=False)
    for _ in range(15):  # a shadow check of one hit in ten stands for ten hits
        few.record("n", 0.9, wrong=False, weight=10)
    assert many.allows("n", 0.9) and not few.allows("n", 0.9)


def test_on_a_labelled_stream_the_served_hits_stay_within_the_bound() -> None:
    """Scores whose true error is 1 - score (calibrated) or 1.3 x that (overconfident): the
    hits served while learning are wrong at most as often as the bound allows."""
    rng = random.Random(7)
    for overconfidence in (1.0, 1.3):
        bound = ErrorBound(0.05)
        served = wrong_served = 0
        for _ in range(20_000):
            score = rng.uniform(0.5, 1.0)
            wrong = rng.random() < min(1.0, overconfidence * (1 - score))
            if bound.allows("default", score):
                served += 1
                wrong_served += wrong
            bound.record("default", score, wrong=wrong)  # every candidate gets its label
        assert served > 2_000  # it does serve
        assert wrong_served / served <= 0.05


@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.booleans(), st.floats(0.1, 20)), min_size=1, max_size=300
    ),
    st.sampled_from([0.01, 0.05, 0.2]),
)
def test_the_served_region_always_meets_the_bound_on_what_was_seen(
    labels: list[tuple[float, bool, float]], rate: float
) -> None:
    bound = ErrorBound(rate)
    for score, wrong, weight in labels:
        bound.record("n", score, wrong=wrong, weight=weight)
    threshold = bound.threshold("n")
    above = [(w, weight) for s, w, weight in labels if s >= threshold]
    if above:
        seen = sum(weight for _, weight in above)
        effective = seen**2 / sum(weight**2 for _, weight in above)
        wrong = sum(weight for w, weight in above if w) / seen * effective
        assert wilson_upper(wrong, effective) <= rate + 1e-9


def test_state_round_trips_and_a_damaged_one_is_ignored() -> None:
    bound = ErrorBound(0.05)
    for _ in range(150):
        bound.record("a", 0.9, wrong=False)
    copy = ErrorBound(0.05)
    copy.restore(json.loads(json.dumps(bound.state())))
    assert copy.threshold("a") == bound.threshold("a") < math.inf
    for damaged in ({}, {"bins": 7}, {"bins": 100, "namespaces": {"a": {"seen": [1]}}}, []):
        fresh = ErrorBound(0.05)
        fresh.restore(damaged)  # type: ignore[arg-type]
        assert fresh.threshold("a") == math.inf


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.02", True])
def test_the_setting_is_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_error_rate"):
        CacheConfig(max_error_rate=bad)  # type: ignore[arg-type]


def test_a_cache_serves_a_paraphrase_once_feedback_shows_such_hits_are_right(
    tmp_path: Path, model: OnnxEmbedder
) -> None:
    with SemanticCache(tmp_path / "c", embedder=model, max_error_rate=0.05) as cache:
        cache.put(STORED, "Mount Everest")
        request = CacheRequest(prompt=ASKED)
        decision = cache.lookup(request)
        assert decision.hit is None and decision.reason is Reason.ERROR_BOUND
        for _ in range(100):  # e.g. the upstream's answers agreed with the cached one
            assert cache.feedback(request, decision, right=True)
        assert cache.lookup(request).reason is Reason.SEMANTIC
        assert cache.stats()["error_bound"]["default"]["labelled"] == 100
        # Labels of another tenant teach nothing here.
        other = CacheRequest(prompt=ASKED, namespace="other")
        cache.put(STORED, "Mount Everest", namespace="other")
        assert cache.lookup(other).reason is Reason.ERROR_BOUND
    with SemanticCache(tmp_path / "c", embedder=model, max_error_rate=0.05) as cache:
        assert cache.lookup(request).reason is Reason.SEMANTIC  # the tallies were kept
        hit = cache.lookup(request).hit
        assert hit is not None
        # A mark takes the entry out of service but is no label: only wrong hits get marked,
        # so counting marks without the right hits served beside them would bias the tally.
        cache.mark_wrong(hit.entry_id)
        assert cache.lookup(request).hit is None
        assert cache.stats()["error_bound"]["default"] == {
            "threshold": cache.error_bound.threshold("default"),
            "labelled": 100.0,
            "error_rate": 0.0,
        }


def test_without_the_setting_feedback_records_nothing(tmp_path: Path, model: OnnxEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=model) as cache:
        cache.put(STORED, "Mount Everest")
        request = CacheRequest(prompt=ASKED)
        decision = cache.lookup(request)
        assert not cache.feedback(request, decision, right=True)
        assert cache.stats()["error_bound"] is None


async def test_the_sidecar_labels_misses_with_a_candidate_and_checked_hits(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(
        tmp_path, embedder, upstream, max_error_rate=0.05, shadow_fraction=1.0
    ) as sidecar:
        client = sidecar.client()
        await client.chat.completions.create(**ask(STORED))
        await sidecar.settled()
        assert sidecar.cache.stats()["error_bound"] == {}  # no candidate yet: no label
        reply = await client.chat.completions.with_raw_response.create(**ask(ASKED))
        await sidecar.settled()
        assert reply.headers["X-Semcache-Reason"] == Reason.ERROR_BOUND.value
        (namespace, tally), *_ = sidecar.cache.stats()["error_bound"].items()  # the tenant's
        labelled = tally["labelled"]
        assert labelled == 1  # the upstream's answer compared with the candidate's
        # Enough agreeing labels later, the paraphrase is served, and its shadow check labels
        # it again (one hit in 1/shadow_fraction checked: weight 1 here).
        # (ASKED itself is now an exact hit: another paraphrase, and labels from 0 up.)
        again = "Which is the tallest mountain in the world?"
        seen = Decision(hit=None, reason=Reason.ERROR_BOUND, score=0.9, confidence=0.0)
        for _ in range(150):
            sidecar.cache.feedback(
                CacheRequest(prompt=ASKED, namespace=namespace), seen, right=True
            )
        reply = await client.chat.completions.with_raw_response.create(**ask(again))
        assert reply.headers["X-Semcache-Reason"] == Reason.SEMANTIC.value, dict(reply.headers)
        await sidecar.app[STATE].shadow.drain()
        assert sidecar.cache.stats()["error_bound"][namespace]["labelled"] == labelled + 151
        metrics = await sidecar.get_text("/metrics")
        assert 'semcache_error_bound_labels_total{source="miss"} 1.0' in metrics
        assert 'semcache_error_bound_labels_total{source="shadow"} 1.0' in metrics


async def test_a_namespace_with_plenty_of_labels_labels_a_sample_of_its_misses(
    tmp_path: Path,
    embedder: CountingEmbedder,
    upstream: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, max_error_rate=0.05) as sidecar:
        client = sidecar.client()
        await client.chat.completions.create(**ask(STORED))
        await sidecar.settled()
        reply = await client.chat.completions.with_raw_response.create(**ask(ASKED))
        await sidecar.settled()
        (namespace, tally), *_ = sidecar.cache.stats()["error_bound"].items()
        assert tally["labelled"] == 1
        bound = sidecar.cache.error_bound
        assert bound is not None
        bound.record(namespace, 0.99, wrong=True, weight=39_999)  # share now 2000/40000
        assert bound.label_share(namespace) == 0.05
        stage = sys.modules["semcache.server.pipeline.store"]
        monkeypatch.setattr(stage, "random", SimpleNamespace(random=lambda: 0.5))
        skipped = await client.chat.completions.with_raw_response.create(
            **ask("Which mountain is the highest in the world?")
        )
        await sidecar.settled()
        assert skipped.headers["X-Semcache-Reason"] == Reason.ERROR_BOUND.value  # a candidate
        assert sidecar.cache.stats()["error_bound"][namespace]["labelled"] == 40_000  # skipped
        monkeypatch.setattr(stage, "random", SimpleNamespace(random=lambda: 0.01))
        await client.chat.completions.create(**ask("Which peak is the tallest in the world?"))
        await sidecar.settled()
        labelled = sidecar.cache.stats()["error_bound"][namespace]["labelled"]
        assert labelled == pytest.approx(40_020)  # sampled: it weighs 1 / 0.05
        assert reply.headers["X-Semcache-Reason"] == Reason.ERROR_BOUND.value
