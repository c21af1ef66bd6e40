"""The bench harness on small samples: figures, files, determinism, formats and bad input."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from semcache.bench import gptcache_baseline
from semcache.bench.datasets import (
    detect_format,
    read_rows,
    same_reference,
    stream_items,
    stream_rows,
)
from semcache.bench.options import BenchOptions
from semcache.bench.pairs import replay_bounded
from semcache.bench.runner import run_bench
from semcache.errors import InvalidRequestError
from semcache.evaluation import Outcome
from tests.conftest import DATA, CountingEmbedder

ROOT = Path(__file__).resolve().parent.parent


def pairs_file(tmp_path: Path, count: int = 80) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join((DATA / "qqp_test_sample.jsonl").read_bytes().splitlines()[:count]))
    return path


def test_pair_mode_reports_every_figure_and_plots(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    out = tmp_path / "out"
    figures = run_bench(
        BenchOptions(file=pairs_file(tmp_path), out=out, progress=False), embedder=embedder
    )
    saved = orjson.loads((out / "results.json").read_bytes())
    assert saved["mode"] == "pairs" and saved["rows"] == 80
    for key in ("hit_rate", "precision", "recall", "false_hit_rate", "f1", "threshold_at_target"):
        assert key in saved
    assert 0 < saved["hit_rate"] < 1 and 0 < saved["precision"] <= 1
    assert saved["baselines"]["exact match"]["hits"] <= saved["hits"]
    assert saved["baselines"]["no cache"]["hits"] == 0
    thresholds = [row["threshold"] for row in saved["sweep"]]
    assert thresholds == sorted(thresholds) and len(thresholds) >= 20
    recalls = [row["recall"] for row in saved["sweep"]]
    assert recalls == sorted(recalls, reverse=True)  # a higher threshold never finds more
    assert saved["knob"] in ("min_similarity", "min_confidence")
    assert (out / f"precision_recall_vs_{saved['knob']}.png").stat().st_size > 10_000
    swaps = saved["swaps"]["semcache"]
    assert swaps["all"]["queries"] == sum(swaps[k]["queries"] for k in swaps if k != "all")
    assert figures["precision"] == saved["precision"]
    assert saved["error_bound"] == []  # no --max-error-rate: no bounded replay


def test_the_bounded_replay_stays_within_the_bound_and_names_the_best_fixed_threshold() -> None:
    rng = random.Random(3)
    outcomes = []
    for _ in range(6000):
        confidence = rng.random()
        outcomes.append(
            Outcome(score=0.9, right=rng.random() < 0.7 + 0.3 * confidence, confidence=confidence)
        )
    outcomes += [Outcome(None, False)] * 50  # lookups without a candidate are not replayed
    replay = replay_bounded(outcomes, "confidence", 0.05, seed=0, z=1.645)
    assert replay.candidates == 6000 and replay.served > 300
    assert replay.realised_error <= 0.05
    # In hindsight, the lowest threshold whose hits at or above it are wrong <= 5% of the time.
    assert replay.fixed_threshold is not None and replay.fixed_served >= replay.served * 0.5
    assert replay.fixed_wrong <= 0.05 * replay.fixed_served
    above = [o for o in outcomes if o.confidence is not None and o.confidence >= 0.9]
    assert sum(not o.right for o in above) / len(above) <= 0.05  # the generator's premise


def test_the_split_keeps_train_and_test_apart(tmp_path: Path, embedder: CountingEmbedder) -> None:
    rows = [
        {"a": f"question {i}", "b": f"question {i}?", "duplicate": True, "id": i} for i in range(30)
    ]
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    test = run_bench(
        BenchOptions(file=path, out=tmp_path / "t", split="test", progress=False), embedder=embedder
    )
    train = run_bench(
        BenchOptions(file=path, out=tmp_path / "r", split="train", progress=False),
        embedder=embedder,
    )
    assert (test["rows"], train["rows"]) == (3, 27)


def test_a_stream_split_follows_the_rows_own_split_else_their_position() -> None:
    """BANKING77 rows carry their split; conversations are split by position, like pair ids,
    so a verifier trained on the rest is measured on rows it never read."""
    clusters = [
        {"cluster": i % 3, "text": f"question {i}", "split": "test" if i % 4 == 0 else "train"}
        for i in range(20)
    ]
    assert [r["text"] for r in stream_rows(clusters, "test")] == [
        f"question {i}" for i in range(0, 20, 4)
    ]
    assert len(stream_rows(clusters, "train")) == 15 and stream_rows(clusters, "all") == clusters
    conversations = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(25)]
    assert [r["messages"][0]["content"] for r in stream_rows(conversations, "test")] == [
        "q0",
        "q10",
        "q20",
    ]


def test_stream_mode_replays_through_the_sidecar(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    options = BenchOptions(
        file=DATA / "banking77_sample.jsonl", out=tmp_path / "s1", seed=7, progress=False
    )
    first = run_bench(options, embedder=embedder)
    semcache = first["semcache"]
    assert first["mode"] == "stream" and semcache["requests"] == 45
    assert semcache["hits"] == semcache["right"] + semcache["wrong"]
    assert semcache["hits"] > 0 and semcache["upstream_calls"] == 45 - semcache["hits"]
    assert semcache["tokens_saved"] > 0 and semcache["dollars_saved"] > 0
    assert semcache["latency_ms_hits"]["p50"] < semcache["latency_ms_misses"]["p50"]
    assert first["baselines"]["no cache"]["upstream_calls"] == 45
    assert len(first["hit_rate_by_tenth"]) == 10
    for name in ("hit_rate_over_stream.png", "latency_histogram.png", "results.json"):
        assert (tmp_path / "s1" / name).is_file()
    # The same seed replays the same stream to the same outcome.
    again = run_bench(
        BenchOptions(file=options.file, out=tmp_path / "s2", seed=7, progress=False),
        embedder=embedder,
    )
    for key in ("hits", "right", "wrong", "tokens_saved", "dollars_saved"):
        assert again["semcache"][key] == semcache[key]


def test_conversations_and_request_logs_become_streams() -> None:
    rows = read_rows(DATA / "meancache_sample.jsonl")
    assert detect_format(rows[0]) == "conversations"
    items = stream_items(rows, "conversations")
    # Two user turns per conversation, each with its paraphrase, and the follow-up and its
    # paraphrase again after the opening's paraphrase: six requests, two labels.
    assert len(items) == 6 * len(rows)
    first, paraphrase = items[0], items[1]
    assert first.label == paraphrase.label and first.text != paraphrase.text
    assert (first.kind, items[2].kind, items[4].kind) == (
        "opening",
        "follow-up",
        "follow-up after reworded history",
    )
    follow_up, reworded = items[2], items[4]
    assert follow_up.body["messages"][:-1] == rows[0]["messages"][:2]
    assert reworded.body["messages"][0]["content"] == rows[0]["paraphrases"]["0"]
    assert reworded.body["messages"][1:] == follow_up.body["messages"][1:]
    assert reworded.label == follow_up.label  # the same question after the same exchange

    # A label is what a turn asks: the same opening question in two conversations is one
    # label (either answer is right for both); the same follow-up after different openings
    # is two.
    def turn(*texts: str) -> dict[str, object]:
        messages = []
        for text in texts:
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "."}]
        return {"messages": messages}

    same = stream_items(
        [turn("What is AI?", "What are its types?"), turn("what is AI", "What are its types?"),
         turn("What is ML?", "What are its types?")],
        "conversations",
    )  # fmt: skip
    assert same[0].label == same[2].label  # the opening question, asked twice
    assert same[1].label != same[5].label  # "its types" after "What is ML?" is another turn
    assert same[1].label != same[3].label  # ... and after "what is AI": another history
    # The data's own answer to each turn is kept: where two turns have the same one, a hit
    # the labels count wrong is still the answer the data gives.
    assert follow_up.reference == rows[0]["messages"][3]["content"]
    assert first.reference == rows[0]["messages"][1]["content"] == paraphrase.reference
    assert same_reference(same[1], same[5]) and not same_reference(follow_up, first)
    log = [{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}]
    assert detect_format(log[0]) == "requests"
    (item,) = stream_items(log, "requests")
    assert item.body["stream"] is False and item.label is None and item.text == "hi"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "has no rows"),
        (b'{"a": 1}\nnot json', "is not JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"question": "x"}', "cannot tell the format"),
    ],
)
def test_bad_files_are_typed_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(InvalidRequestError, match=message):
        run_bench(BenchOptions(file=path, out=tmp_path / "o", progress=False))


def test_pair_mode_refuses_rows_without_pairs(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="pair mode needs pair rows"):
        run_bench(
            BenchOptions(
                file=DATA / "banking77_sample.jsonl", out=tmp_path, mode="pairs", progress=False
            )
        )


@pytest.mark.skipif(not gptcache_baseline.available(), reason="the gptcache extra is not installed")
def test_gptcache_baseline_runs_with_the_same_model(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    figures = run_bench(
        BenchOptions(file=pairs_file(tmp_path, 40), out=tmp_path / "g", progress=False),
        embedder=embedder,
    )
    gptcache = figures["baselines"]["GPTCache (default threshold)"]
    assert gptcache is not None and gptcache["queries"] == 40 and gptcache["hits"] > 0


def test_the_cli_runs_a_bench_and_reports_bad_files(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "semcache", "bench", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "cannot read" in bad.stderr
    good = subprocess.run(
        [sys.executable, "benchmarks/bench.py", str(pairs_file(tmp_path, 20)),
         "--out", str(tmp_path / "cli"), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert "precision" in good.stdout
    assert orjson.loads((tmp_path / "cli" / "results.json").read_bytes())["rows"] == 20


def test_unjudged_hits_are_reported_as_unjudged_not_as_zero() -> None:
    from semcache.bench import report
    from semcache.bench.stream import StreamResult

    unlabelled = StreamResult(
        name="semcache",
        hits=[False, True, True],
        right=[False, False, False],
        wrong=[False, False, False],
        unverified=[False, True, True],
        latency_ms=[30.0, 5.0, 6.0],
    )
    figures = report.stream_figures(
        unlabelled, [False, False, False], calls_without_cache=3, cost_all=1.0
    )
    assert figures["precision"] is None and figures["recall"] is None
    table = report.print_stream_table({"semcache": figures})
    assert "unjudged" in table and "0.000 |  0.000" not in table


def test_progress_bars_stay_out_of_logs(tmp_path: Path) -> None:
    piped = subprocess.run(
        [sys.executable, "benchmarks/bench.py", str(pairs_file(tmp_path, 20)),
         "--out", str(tmp_path / "piped")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert "it/s" not in piped.stderr and "q/s" not in piped.stderr


def test_the_simulated_upstream_answers_agree_within_a_label_only(
    embedder: CountingEmbedder,
) -> None:
    """What a bounded stream replay learns from: a miss's candidate is right when its stored
    answer agrees in meaning with the upstream's, which holds exactly when the labels match."""
    from semcache.bench.stream import SimulatedUpstream, Simulation
    from semcache.shadow import compare_answers

    items = stream_items(read_rows(DATA / "banking77_sample.jsonl"), "clusters")
    upstream = SimulatedUpstream(Simulation(seed=3), items)
    by_label: dict[object, list[int]] = {}
    for i, item in enumerate(items):
        by_label.setdefault(item.label, []).append(i)
    same = [ids[:2] for ids in by_label.values() if len(ids) > 1]
    labels = list(by_label)
    other = [(by_label[a][0], by_label[b][0]) for a, b in itertools.pairwise(labels)]
    for pairs, agree in ((same, True), (other, False)):
        for i, j in pairs:
            verdict = compare_answers(
                upstream.answer(i), upstream.answer(j), embed=embedder.embed, agreement=0.75
            )
            assert verdict.agree is agree, (items[i].text, items[j].text, verdict.similarity)


def test_stream_mode_under_an_error_bound_reports_its_realised_error(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    options = BenchOptions(
        file=DATA / "banking77_sample.jsonl", out=tmp_path, seed=7, progress=False,
        max_error_rate=0.05,
    )  # fmt: skip
    figures = run_bench(options, embedder=embedder)
    bounded = figures["error_bound"]
    replay = figures["baselines"]["semcache, max_error_rate 0.05"]
    assert bounded["max_error_rate"] == 0.05 and bounded["hits"] == replay["hits"]
    assert bounded["wrong"] == replay["wrong"] and len(bounded["by_tenth"]) == 10
    assert bounded["by_tenth"][-1]["requests"] == 45
    # It learnt from its own misses' candidates: the sidecar labelled them by their answers.
    assert bounded["labels_learnt"] > 0
    # A bound that has learnt little serves little: never more than the unbounded cache.
    assert bounded["hits"] <= figures["semcache"]["hits"]
    if bounded["realised_error"] is not None:
        assert bounded["within_bound"] is (bounded["realised_error"] <= 0.05)
    # Beside it, fixed thresholds over the same stream, and the best one within the bound.
    fixed = bounded["fixed"]
    assert fixed["knob"] == "min_confidence"
    replays = fixed["replays"]
    assert [r["threshold"] for r in replays] == sorted(r["threshold"] for r in replays)
    for r in replays:
        assert r["hits"] == r["right"] + r["wrong"]  # labelled: every hit is judged
        assert r["realised_error"] == (r["wrong"] / r["hits"] if r["hits"] else 0.0)
    assert replays[0]["hits"] >= replays[-1]["hits"]  # a stricter threshold serves less
    assert replays[-1]["threshold"] == 0.99  # the search starts from the strictest
    within = [r for r in replays if r["realised_error"] <= 0.05]
    best = max(within, key=lambda r: r["hits"]) if within else None
    assert fixed["best_within_bound"] == (None if best is None else best["threshold"])
    if best is not None and best["threshold"] > 0.5:  # the next threshold down was too lax
        below = {r["threshold"]: r for r in replays}[round(best["threshold"] - 0.01, 2)]
        assert below["realised_error"] > 0.05
    assert bounded["beats_best_fixed"] is (best is None or bounded["hits"] > best["hits"])


def test_generated_swaps_change_the_question() -> None:
    """A swap must want another answer: coordinated words trading places ("good and bad"), the
    two sides of a symmetric relation trading places ("GPS compared to GLONASS"), and "or not"
    dropped, ask the same thing and are not made (hits on them were counted false)."""
    from semcache.bench.swaps import swap_variants

    made = {(s.original, s.kind): s.variant for s in swap_variants([
        "Why do dogs hate cats?",
        "What is good and bad?",
        "Which is the best: iOS or Android?",
        "What are the causes and origins of anti-Semitism?",
        "How can you tell if a guy likes you or not?",
        "Why doesn't Google buy Quora?",
        "How does GLONASS compare to GPS?",
        "How are British actors different from American actors?",
        "What is the difference between Chinese culture and Western culture?",
        "Audio, Vision, and NLP datasets can be worked with using this tool.",
    ])}  # fmt: skip
    assert (
        "Audio, Vision, and NLP datasets can be worked with using this tool.",
        "word_order",
    ) not in made
    assert ("How does GLONASS compare to GPS?", "word_order") not in made
    assert ("How does GLONASS compare to GPS?", "roles") not in made
    assert ("How are British actors different from American actors?", "roles") not in made
    assert (
        "What is the difference between Chinese culture and Western culture?",
        "word_order",
    ) not in made
    assert made[("Why do dogs hate cats?", "roles")] == "Why do cats hate dogs?"
    assert made[("Why doesn't Google buy Quora?", "negation")] == "Why does Google buy Quora?"
    assert ("What is good and bad?", "roles") not in made
    assert ("Which is the best: iOS or Android?", "word_order") not in made
    assert ("What are the causes and origins of anti-Semitism?", "roles") not in made
    assert ("How can you tell if a guy likes you or not?", "negation") not in made
