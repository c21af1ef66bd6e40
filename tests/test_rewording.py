"""Rewordings: the same words with numbers, contractions, articles or titles spelt otherwise,
or one clause or phrase moved whole to the other end. The verifier doubted them (probabilities
0.50-0.65 at cosine 0.98-0.99 for "ten years" / "10 years", "Dr. Smith" / "Smith", a clause
fronted); they are served, and anything that changes who does what is still refused."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from semcache import CacheRequest, SemanticCache
from semcache.decision import REWORDED_CONFIDENCE
from semcache.policy import Reason, guard_mismatch, reworded

REWORDINGS = [
    # Spelt otherwise: numbers, "percent", contractions, articles, titles, "that" after "said",
    # dotted acronyms, hyphens, punctuation.
    ("He was sentenced to 10 years in prison.", "He was sentenced to ten years in prison."),
    ("Profit rose 12 percent in the quarter.", "Profit rose 12% in the quarter."),
    ("The deal is worth $1.2 billion.", "The deal is worth 1.2 billion dollars."),
    ("Dr. Smith said the vaccine was safe.", "Smith said the vaccine was safe."),
    ("It's not possible to undo this.", "It is not possible to undo this."),
    ("Why can't I log in?", "Why cannot I log in?"),
    ("The U.S. economy grew 2 percent.", "The US economy grew 2 per cent."),
    ("What are some mind blowing facts?", "What are some mind-blowing facts?"),
    ("What is the activation energy?", "What is activation energy?"),
    # One clause or phrase moved whole from one end to the other.
    (
        "The meeting was postponed because the CEO was ill.",
        "Because the CEO was ill, the meeting was postponed.",
    ),
    (
        "The vote was scheduled for Thursday, officials said.",
        "Officials said that the vote was scheduled for Thursday.",
    ),
    ("How do I sort a list in Python?", "In Python, how do I sort a list?"),
    (
        "Is it a problem when a laptop runs out of power?",
        "When a laptop runs out of power, is it a problem?",
    ),
    # A phrase of place or time taken from within and put first (news).
    (
        "The Supreme Court agreed on Monday to hear the case.",
        "On Monday, the Supreme Court agreed to hear the case.",
    ),
    (
        "She returned to Paris after the war and opened a shop.",
        "After the war, she returned to Paris and opened a shop.",
    ),
    # A participle's phrase set off after the subject, put first (news, encyclopaedias).
    (
        "The museum, founded in 1901, is the oldest in the region.",
        "Founded in 1901, the museum is the oldest in the region.",
    ),
    (
        "Picasso, born in Malaga, moved to Paris in 1904.",
        "Born in Malaga, Picasso moved to Paris in 1904.",
    ),
    # Two noun phrases joined by "and" exchanged.
    ("A man and a woman are dancing.", "A woman and a man are dancing."),
]

NOT_REWORDINGS = [
    # Roles exchanged, a question word dropped, symbols and scripts that differ.
    ("A dog is chasing a cat.", "A cat is chasing a dog."),
    ("John gave Mary a book.", "Mary gave John a book."),
    ("Why is the sky blue?", "Is the sky blue?"),
    ("What is the difference between C++ and C#?", "What's the difference between C and C++?"),
    ("What does 时尚达人 mean?", "What does 笑点 mean?"),
    ("What is -5 squared?", "What is 5 squared?"),
    # Words traded that no whole clause or phrase moved gives.
    ("Google bought YouTube last year.", "YouTube last year Google bought."),
    ("The cat and my dog are asleep.", "The dog and my cat are asleep."),
    ("He ate and then left.", "He left and then ate."),
    # One of two stacked phrases put first, or a phrase moved to the end past another.
    (
        "In The Catcher in the Rye, what is Holden Caulfield's personality like?",
        "In The Rye in the Catcher, what is Holden Caulfield's personality like?",
    ),
    ("Where can I stay in Maharashtra in India?", "Where can I stay in India in Maharashtra?"),
    # A participle's phrase after a verb says something of the object; put first, of the subject.
    (
        "She met the man, injured in the crash, at the station.",
        "Injured in the crash, she met the man at the station.",
    ),
    (
        "The police arrested him, wanted for the robbery, at the station.",
        "Wanted for the robbery, the police arrested him at the station.",
    ),
    # Ordinals and fractions are no spelt cardinals.
    ("A third of the students passed.", "Three of the students passed."),
    ("Half of the votes were counted.", "0.5 of the votes were counted."),
]


@pytest.mark.parametrize(("a", "b"), REWORDINGS)
def test_rewordings_are_recognised_both_ways(a: str, b: str) -> None:
    assert reworded(a, b)
    assert reworded(b, a)


@pytest.mark.parametrize(("a", "b"), NOT_REWORDINGS)
def test_changed_meaning_is_no_rewording(a: str, b: str) -> None:
    assert not reworded(a, b)
    assert not reworded(b, a)


def test_rewordings_the_verifier_doubted_are_served(cache: SemanticCache) -> None:
    for n, (stored, _) in enumerate(REWORDINGS):
        cache.put(stored, f"answer {n}", namespace=f"n{n}")
    for n, (_, asked) in enumerate(REWORDINGS):
        decision = cache.lookup(CacheRequest(prompt=asked, namespace=f"n{n}"))
        assert decision.hit is not None, (asked, decision)
        assert decision.hit.response == f"answer {n}"
        assert decision.reason in (Reason.EXACT, Reason.SEMANTIC)
        if decision.reason is Reason.SEMANTIC:
            assert decision.confidence is not None
            assert decision.confidence >= REWORDED_CONFIDENCE


def test_a_rewording_does_not_override_the_guards(cache: SemanticCache) -> None:
    """The clause moved, but the numbers or the roles in it changed: still refused."""
    cache.put("The meeting was postponed because the CEO was ill for 3 days.", "A")
    cache.put("The vote was scheduled for Thursday, officials said.", "B")
    for asked, reason in (
        ("Because the CEO was ill for 4 days, the meeting was postponed.", Reason.NUMBER_MISMATCH),
        ("Officials said that the vote was not scheduled for Thursday.", Reason.NEGATION_MISMATCH),
    ):
        decision = cache.lookup(CacheRequest(prompt=asked))
        assert decision.hit is None and decision.reason is reason, (asked, decision)


_WORDS = st.sampled_from(
    "the a man dog cat Paris Smith because in said officials 10 ten % percent and or , . ? "  # noqa: SIM905
    "can't it's Dr. C++ 北京 -5".split()
)


@given(st.lists(_WORDS, max_size=14), st.lists(_WORDS, max_size=14))
def test_rewording_is_symmetric_and_never_raises(a: list[str], b: list[str]) -> None:
    first, second = " ".join(a), " ".join(b)
    assert reworded(first, second) == reworded(second, first)
    guard_mismatch(first, second)  # never raises


@given(st.text(max_size=200))
def test_punctuation_and_case_are_no_rewording_of_their_own(text: str) -> None:
    # Capitals that fold to another letter are another letter: Turkish "ı" is no "i".
    assume(text.upper().casefold() == text.casefold())
    assert reworded(text, text) == reworded(text.upper() + " ?!", text)
