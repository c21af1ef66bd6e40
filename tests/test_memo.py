"""The memos of what the guards and the verifier read from texts: bounded in characters of
text held as well as in entries, so long prompts (a retrieval-augmented app's) cannot fill
memory with their readings."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Iterator

import pytest

from semcache import policy, verification
from semcache.memo import TextMemo


def counting() -> tuple[TextMemo[int], list[str]]:
    calls: list[str] = []

    def read(text: str) -> int:
        calls.append(text)
        return len(text)

    return TextMemo(read, entries=3, chars=100), calls


def test_a_text_is_read_once_while_it_is_held() -> None:
    read, calls = counting()
    assert [read("ab"), read("ab"), read("cde")] == [2, 2, 3]
    assert calls == ["ab", "cde"]


def test_the_least_recently_used_text_goes_first_past_the_entry_limit() -> None:
    read, calls = counting()
    for text in ["a", "b", "c", "a", "d"]:  # "a" is used again, so "b" is the oldest
        read(text)
    calls.clear()
    read("a")
    read("b")
    assert calls == ["b"]
    assert len(read) == 3


def test_the_characters_held_stay_within_the_limit() -> None:
    read, calls = counting()
    read("x" * 60)
    read("y" * 30)
    assert read.held_chars == 90
    read("z" * 30)  # 120 characters: the oldest goes
    assert read.held_chars == 60 and len(read) == 2
    calls.clear()
    read("x" * 60)
    assert calls == ["x" * 60]


def test_a_text_longer_than_the_limit_is_read_each_time_and_never_held() -> None:
    read, calls = counting()
    read("w" * 10)
    for _ in range(2):
        assert read("v" * 101) == 101
    assert calls == ["w" * 10, "v" * 101, "v" * 101]
    assert read.held_chars == 10


@pytest.fixture
def small_memos() -> Iterator[list[TextMemo[object]]]:
    """The guards' and the verifier's memos, emptied and limited to 200,000 characters each
    (a tenth of their own limit, so that the test reads a tenth as much)."""
    found = [v for m in (policy, verification) for v in vars(m).values()]
    memos = list({id(v): v for v in found if isinstance(v, TextMemo)}.values())
    limits = [m.chars for m in memos]
    for m in memos:
        m.clear()
        m.chars = 200_000
    yield memos
    for m, limit in zip(memos, limits, strict=True):
        m.clear()
        m.chars = limit


def test_reading_long_prompts_keeps_memory_bounded(small_memos: list[TextMemo[object]]) -> None:
    """Guards and verifier features over 60 distinct prompts of about 10,000 characters
    (600,000 in all, three times the memos' limit here): memos bounded in entries alone held
    all of them, 0.8 MiB per pair."""
    assert len(small_memos) == 6
    rng = random.Random(0)
    words = [
        "cache",
        "model",
        "answer",
        "vector",
        "prompt",
        "request",
        "token",
        "upstream",
        "budget",
        "index",
    ]
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(60):
            text = " ".join(rng.choice(words) for _ in range(1_500))
            other = text + " again"
            policy.guard_mismatch(other, text)
            policy.reworded(other, text)
            verification.lexical_features(other, text)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(m.held_chars <= 200_000 for m in small_memos)
    assert held < 20 * 2**20, f"{held / 2**20:.0f} MiB held"  # 47 MiB before, 7.6 after
