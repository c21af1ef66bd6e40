"""Adversarial swaps: questions a word or two away from a stored one that want another answer.

Cosine similarity barely moves when two names trade places or a "not" appears, so these are
the wrong hits a threshold cannot prevent. From each question of the evaluated rows at most one
variant of each kind is made:

- ``word_order``: two roles traded ("from X to Y", "X than Y", "convert X to Y", two names);
- ``entity``: one name replaced by another name seen in the rows;
- ``number``: one number changed;
- ``negation``: the first auxiliary verb negated ("does" → "doesn't"), or the negation removed;
- ``roles``: the first and the last content word of the question trade places when at least one
  word stands between them ("why do dogs hate cats" → "why do cats hate dogs"): who does what
  to whom, beyond the patterns of ``word_order``.

Two words joined by "and", "or", a comma or a slash trade places without changing the question
("good and bad" / "bad and good", "iOS or Android"), and "... or not?" asks what "...?" asks: no
such variant is made, since a hit on it would be right.

Every variant is looked up in the cache that holds the originals; a hit is a false hit unless
the answer served was stored for the very text of the variant (a real question that happens to
be in the rows).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from semcache.keys import normalize_prompt
from semcache.policy import content_words, features

KINDS = ("word_order", "entity", "number", "negation", "roles")

_ROLE_PATTERNS = (
    re.compile(r"\bfrom (\w+) to (\w+)", re.I),
    re.compile(
        r"\b(\w+) (?:is |are )?(?:better|worse|faster|slower|bigger|smaller|cheaper|"
        r"stronger|weaker|safer|harder|easier|older|larger|richer|more \w+|less \w+) "
        r"than (\w+)",
        re.I,
    ),
    re.compile(
        r"\b(?:convert|translate|switch|migrate|move)(?:ing)? (\w+) (?:to|into) (\w+)", re.I
    ),
    re.compile(r"\b(\w+) (?:vs\.?|versus) (\w+) for\b", re.I),
)
_AUXILIARY = re.compile(
    r"\b(is|are|was|were|can|could|should|would|will|does|do|did|has|have)\b", re.I
)
_NEGATED_FORM = {"can": "can't", "will": "won't"}
_NEGATION = re.compile(r"\s*\b(not|never)\b|\b(can't|won't|cannot)|n't\b", re.I)
_UNNEGATED = {"can't": "can", "won't": "will", "cannot": "can"}
_NUMBER = re.compile(r"\b\d+\b")
_OR_NOT = re.compile(r"\bor not\b", re.I)


@dataclass(frozen=True)
class Swap:
    original: str
    variant: str
    kind: str


def swap_variants(questions: Sequence[str], *, seed: int = 0) -> list[Swap]:
    """Variants of ``questions``, at most one of each kind per question, in a fixed order for a
    given seed."""
    rng = random.Random(seed)
    names = sorted({e for q in questions for e in _names(q)})
    out: list[Swap] = []
    for question in dict.fromkeys(questions):
        for kind, variant in (
            ("word_order", _word_order(question)),
            ("entity", _entity(question, names, rng)),
            ("number", _number(question, rng)),
            ("negation", _negation(question)),
            ("roles", _roles(question)),
        ):
            if variant and normalize_prompt(variant) != normalize_prompt(question):
                out.append(Swap(question, variant, kind))
    return out


def _word_order(question: str) -> str | None:
    stop = set(content_words(question))
    for pattern in _ROLE_PATTERNS:
        match = pattern.search(question)
        if match is None:
            continue
        first, second = match.group(1), match.group(2)
        if first.lower() == second.lower() or not {first.lower(), second.lower()} <= stop:
            continue
        start, end = match.span(1)[0], match.span(2)[1]
        span = question[start:end]
        swapped = second + span[len(first) : len(span) - len(second)] + first
        return question[:start] + swapped + question[end:]
    entities = features(question).entities
    if len(entities) >= 2:
        return _trade(question, entities[0], entities[1])
    return None


_ALPHABETIC_WORD = re.compile(r"\b[A-Za-z][A-Za-z'-]*\b")


def _roles(question: str) -> str | None:
    words = [m.group() for m in _ALPHABETIC_WORD.finditer(question)]
    lowered = [w.lower() for w in words]
    content = [
        i
        for i, w in enumerate(lowered)
        if len(w) >= 3 and w in content_words(w) and lowered.count(w) == 1
    ]
    if len(content) < 2 or content[-1] - content[0] < 2:
        return None
    return _trade(question, words[content[0]], words[content[-1]])


# Between two words, what makes them a coordination ("good and bad", "iOS or the Android"), or
# the two sides of a symmetric relation ("British actors different from American actors", "GPS
# compared to GLONASS"): they trade places without changing the question, so no such variant
# is a swap.
_COORDINATED = re.compile(
    r"[\s`'\"]*(?:,|&|/|,?\s*\band\b|,?\s*\bor\b|\band/or\b)[\s`'\"]*"
    r"(?:(?:the|a|an)\s+)?(?:\w+\.)?",  # "`CRITICAL` or `FATAL`", "x.A and x.B"
    re.I,
)
_SYMMETRIC_RELATION = re.compile(
    r"\b(?:differ|differs|different|difference|differences|compare|compared|comparison|versus"
    r"|vs|similar|similarity|same|equal|equivalent|relationship)\b",
    re.I,
)
_RELATION_WORDS = 4  # words at most between the two sides of a symmetric relation


def _trade(text: str, first: str, second: str) -> str | None:
    a = re.search(rf"\b{re.escape(first)}\b", text, re.I)
    b = re.search(rf"\b{re.escape(second)}\b", text, re.I)
    if a is None or b is None or a.start() > b.start() or a.end() > b.start():
        return None
    between = text[a.end() : b.start()]
    if _COORDINATED.fullmatch(between):
        return None
    if len(between.split()) <= _RELATION_WORDS and _SYMMETRIC_RELATION.search(between):
        return None
    if re.search(r"\bbetween\s+(?:(?:the|a|an)\s+)?$", text[: a.start()], re.I) and re.search(
        r"\b(?:and|or)\b", between, re.I
    ):
        return None  # "the difference between Chinese culture and Western culture"
    return text[: a.start()] + b.group() + text[a.end() : b.start()] + a.group() + text[b.end() :]


def _entity(question: str, names: Sequence[str], rng: random.Random) -> str | None:
    entities = _names(question)
    if not entities or len(names) < 2:
        return None
    target = rng.choice(entities)
    if all(n == target or n in question.lower() for n in names):
        return None  # every known name is in the question already: none to put in
    other = rng.choice(names)
    while other == target or other in question.lower():
        other = rng.choice(names)
    match = re.search(rf"\b{re.escape(target)}\b", question, re.I)
    if match is None:
        return None
    return question[: match.start()] + other.capitalize() + question[match.end() :]


def _unnegate(match: re.Match[str]) -> str:
    word = match.group(2)
    return "" if word is None else _UNNEGATED[word.lower()]


def _names(question: str) -> list[str]:
    return [e for e in features(question).entities if e.isalpha() and len(e) >= 3]


def _number(question: str, rng: random.Random) -> str | None:
    match = _NUMBER.search(question)
    if match is None:
        return None
    value = int(match.group())
    other = value + rng.choice([1, 2, 3, 5, 10]) if value < 1900 or value > 2100 else value + 1
    return question[: match.start()] + str(other) + question[match.end() :]


def _negation(question: str) -> str | None:
    if _OR_NOT.search(question):
        return None  # "... or not?" asks what "...?" asks: dropping it negates nothing
    if _NEGATION.search(question):
        removed = _NEGATION.sub(_unnegate, question, count=1)
        return removed if removed.strip() else None
    match = _AUXILIARY.search(question)
    if match is None:
        return None
    word = match.group()
    negated = _NEGATED_FORM.get(word.lower(), word + "n't")
    if word[0].isupper():
        negated = negated.capitalize()
    return question[: match.start()] + negated + question[match.end() :]
