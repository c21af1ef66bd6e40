"""Texts cut into units (sentences, lines of code or lists), what each unit holds that is
worth keeping, and a text rendered with only some of its units, the elisions marked.

Everything here is a pure function of the text it is given, memoised: the same message is
shortened the same way on every turn of a conversation, which is what keeps the compressed
history a stable prefix for the provider's prompt cache.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import TypeVar

from semcache.policy import function_word
from semcache.tokens import count_text

ELISION = "[…]"

_FENCE = re.compile(r"^\s*(```|~~~)")
_LIST_OR_HEADING = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)]|#{1,6})\s")
# A sentence ends at . ! ? … (or the danda, the Arabic question mark, the Urdu and Ethiopic
# full stops) followed by space and what may open a sentence (see _opens_sentence), or at the
# CJK 。！？ with no space; "e.g. the", "3.5" and "Dr. Smith" do not end one.
_SENTENCE_END = ".!?…।॥؟۔።"
_CJK_SENTENCE_END = "。！？"
_SENTENCE_BREAK = re.compile(
    f"(?<=[{_SENTENCE_END}])([\"”»’')\\]]?)\\s+|(?<=[{_CJK_SENTENCE_END}])"
)
_OPENING = "\"“„«‹'‘([¿¡"  # what may stand before a sentence's first letter
_ABBREVIATION = re.compile(
    r"(?:\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Ms|Dr|Prof|St|No|approx|cf)\.|\b[A-Z]\.)$"
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,:/-]\d+)*(?![\w])|\b\w*\d\w*\b")
_IDENTIFIER = re.compile(
    r"\b[A-Za-z]+_[A-Za-z0-9_]+\b|\b[a-z]+[A-Z][A-Za-z0-9]*\b|\b\w+\(\)|`[^`\n]{1,80}`"
)
_LINK = re.compile(r"https?://\S+|\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_WORD = re.compile(r"\b[^\W\d_]{2,}\b")  # letters of any script
_CODE_HEADER = re.compile(
    r"^\s*(?:def|class|function|fn|func|async|export|public|private|struct|interface|impl|"
    r"module|package|import|from|#include|CREATE|SELECT)\b"
)


_T = TypeVar("_T")


def digest(text: str) -> bytes:
    """A short digest that stands for a text in memos."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def memoised(size: int) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Like ``lru_cache``, but keyed by a digest of the text (the first argument), so that the
    memo holds no client text: its size stays bounded however long the messages are."""

    def decorate(function: Callable[..., _T]) -> Callable[..., _T]:
        memo: OrderedDict[tuple[object, ...], _T] = OrderedDict()
        lock = threading.Lock()

        @wraps(function)
        def wrapper(text: str, *rest: object) -> _T:
            key = (digest(text), *rest)
            with lock:
                if key in memo:
                    memo.move_to_end(key)
                    return memo[key]
            value = function(text, *rest)
            with lock:
                memo[key] = value
                if len(memo) > size:
                    memo.popitem(last=False)
            return value

        return wrapper

    return decorate


@memoised(65536)
def tokens_in(text: str) -> int:
    """Tokens of ``text`` by the real tokenizer (memoised: histories are resent each turn)."""
    return count_text(text)


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    kind: str  # prose | line | code
    opens: str  # message | paragraph | "" (neither)


@memoised(16384)
def units_of(text: str) -> tuple[Unit, ...]:
    units: list[Unit] = []
    in_code = False
    offset = 0
    paragraph_start = True
    for raw in text.splitlines(keepends=True):
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        start = offset + (len(line) - len(line.lstrip()))
        end = offset + len(line.rstrip())
        offset += len(raw)
        if _FENCE.match(line):
            in_code = not in_code
            units.append(Unit(start, end, "code", _opens(units, paragraph_start)))
            paragraph_start = False
            continue
        if not stripped:
            paragraph_start = True
            continue
        if in_code or line.startswith(("    ", "\t")):
            units.append(Unit(start, end, "code", _opens(units, paragraph_start)))
        elif _LIST_OR_HEADING.match(line) or stripped.startswith("|"):
            units.append(Unit(start, end, "line", _opens(units, paragraph_start)))
        else:
            for s, e in _sentences(text, start, end):
                units.append(Unit(s, e, "prose", _opens(units, paragraph_start)))
                paragraph_start = False
        paragraph_start = False
    return tuple(units)


def _opens(units: list[Unit], paragraph_start: bool) -> str:
    if not units:
        return "message"
    return "paragraph" if paragraph_start else ""


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    cursor = start
    for match in _SENTENCE_BREAK.finditer(text, start, end):
        if match.end() > match.start() and not _opens_sentence(text, match.end(), end):
            continue
        if _ABBREVIATION.search(text[cursor : match.start()]):
            continue
        closing = match.start() + len(match.group(1) or "")  # a closing quote stays with it
        piece_end = cursor + len(text[cursor:closing].rstrip())
        if piece_end > cursor:
            spans.append((cursor, piece_end))
        cursor = match.end()
    if cursor < end:
        spans.append((cursor, end))
    return spans


def _opens_sentence(text: str, position: int, end: int) -> bool:
    """Whether what follows ``position`` may open a sentence: past opening quotes and
    brackets, a digit, a capital, or a letter of a script without case (Arabic, Devanagari,
    Hebrew …), not a lower-case letter ("e.g. the")."""
    while position < end and text[position] in _OPENING:
        position += 1
    if position >= end:
        return False
    first = text[position]
    return first.isdigit() or (first.isalpha() and not first.islower())


def names_in(text: str) -> list[str]:
    """Capitalised words (in any script with case) that do not open a sentence: names,
    mostly."""
    found = []
    for match in _WORD.finditer(text):
        word = match.group()
        if not word[0].isupper() or not any(c.islower() for c in word[1:]):
            continue
        before = text[max(0, match.start() - 16) : match.start()].rstrip(" " + _OPENING)
        opener = before[-1:] in (_SENTENCE_END + _CJK_SENTENCE_END + ":\n-*•#")
        if before and not opener and not before[-1].isdigit():
            found.append(word)
    return found


@memoised(65536)
def salience(unit_text: str, kind: str, opens: str, user: bool) -> float:
    """How much a unit is worth keeping whatever is asked next: the sentence that opens a
    message or paragraph, and units that carry facts (numbers, names, identifiers, links)."""
    score = {"message": 2.0, "paragraph": 0.6}.get(opens, 0.0)
    if user:
        score += 1.0
    if kind == "code":
        return score + (0.8 if _CODE_HEADER.match(unit_text) else -1.0)
    if _NUMBER.search(unit_text):
        score += 1.2
    if _LINK.search(unit_text):
        score += 1.0
    if _IDENTIFIER.search(unit_text):
        score += 0.8
    if names_in(unit_text):
        score += 0.8
    if len(unit_text) < 16:
        score -= 0.5
    return score


# (tokens kept whole, share kept of a longer text): users state facts in few words and the
# question often comes back to them; answers are long and restate what was asked.
USER_KEEP = (128, 0.5)
ASSISTANT_KEEP = (48, 0.15)


def kept_units(text: str, *, user: bool) -> set[int]:
    """The units of ``text`` worth sending whatever is asked next: all of a short text, the
    most salient of a longer one up to its share of tokens."""
    units = units_of(text)
    whole, share = USER_KEEP if user else ASSISTANT_KEEP
    total = tokens_in(text)
    if total <= whole or len(units) <= 1:
        return set(range(len(units)))
    return chosen(text, units, user=user, budget=max(whole // 2, int(total * share)))


def chosen(text: str, units: tuple[Unit, ...], *, user: bool, budget: int) -> set[int]:
    ranked = sorted(
        range(len(units)),
        key=lambda i: (-salience(_span(text, units[i]), units[i].kind, units[i].opens, user), i),
    )
    kept: set[int] = set()
    spent = 0
    for i in ranked:
        cost = tokens_in(_span(text, units[i]))
        if kept and spent + cost > budget:
            continue
        kept.add(i)
        spent += cost
    return kept


def render(text: str, units: tuple[Unit, ...], kept: set[int]) -> str:
    if len(kept) == len(units):
        return text
    out: list[str] = []
    previous: int | None = None
    for i, unit in enumerate(units):
        if i not in kept:
            continue
        if previous is None:
            if i > 0:
                out.append(ELISION + ("\n" if "\n" in text[: unit.start] else " "))
        elif previous == i - 1:
            out.append(text[units[previous].end : unit.start])
        else:
            gap = text[units[previous].end : unit.start]
            out.append(f"\n{ELISION}\n" if "\n" in gap else f" {ELISION} ")
        out.append(_span(text, unit))
        previous = i
    if previous is not None and previous < len(units) - 1:
        gap = text[units[previous].end :]
        out.append(f"\n{ELISION}" if "\n" in gap else f" {ELISION}")
    return "".join(out)


def _span(text: str, unit: Unit) -> str:
    return text[unit.start : unit.end]


# How a short message points back at the conversation ("what was my order number again?",
# "did I say", "you told me"): it wants something said earlier. The words that do the pointing
# say nothing of what is wanted, so they are no content words. A long message (a pasted text,
# a role-play prompt) uses such words for other ends.
_REFERRING = frozenset(
    ("remember", "remembered", "recall", "again", "earlier", "mentioned", "repeat", "remind",
     "previously", "forgot", "forget")
)  # fmt: skip
_REFERS_BACK = re.compile(
    r"\b(?:did|have|had) (?:i|we|you) (?:say|tell|mention|give|ask|share|write)\b"
    r"|\b(?:i|you|we) (?:said|told|mentioned|gave|asked|shared|wrote)\b"
    # a question about the user's own things or doings: "what's my dog called?", "which
    # city do I live in?" (only the user can have said it)
    r"|\b(?:what|which|who|whom|whose|where|when|how)\b[^.!?\n]*"
    r"(?:\bmy\b|\b(?:do|did|am|was|have|had) i\b)[^.!?\n]*\?",
    re.IGNORECASE,
)
_SHORT_MESSAGE_WORDS = 60


@dataclass(frozen=True)
class Cues:
    """What a question refers back with: rare tokens (numbers, names, identifiers), its
    content words, and whether it says that it refers back."""

    rare: frozenset[str]
    words: frozenset[str]
    refers_back: bool


LEXICAL_CHARS = 4000  # what is read of a long unit or question (a line of minified code …)


@memoised(4096)
def cues_of(text: str) -> Cues:
    text = text[:LEXICAL_CHARS]
    rare = {m.group().lower().strip("`") for m in _NUMBER.finditer(text)}
    rare |= {m.group().lower().strip("`") for m in _IDENTIFIER.finditer(text)}
    rare |= {name.lower() for name in names_in(text)}
    words = [w for w in lexical_words(text) if len(w) > 2 or _HAN_OR_KANA.match(w)]
    short = len(text.split()) <= _SHORT_MESSAGE_WORDS
    return Cues(
        frozenset(r for r in rare if len(r) > 1),
        frozenset(stem(w) for w in words if w not in _REFERRING),
        short and (any(w in _REFERRING for w in words) or _REFERS_BACK.search(text) is not None),
    )


# Words of any script. Chinese and Japanese are written without spaces: a run of their
# characters counts as its overlapping pairs of characters, the usual unit for matching them.
_HAN_OR_KANA_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_OR_KANA = re.compile(f"[{_HAN_OR_KANA_CHARS}]+")
_LEXICAL_WORD = re.compile(
    f"[{_HAN_OR_KANA_CHARS}]+|[^\\W_{_HAN_OR_KANA_CHARS}]+(?:'[^\\W_{_HAN_OR_KANA_CHARS}]+)?"
)


@memoised(8192)
def lexical_words(text: str) -> tuple[str, ...]:
    """The lower-cased words of ``text`` that are not (English) function words, in order;
    runs of Chinese or Japanese characters as pairs of characters (memoised: a history's
    units are matched again on every turn)."""
    words: list[str] = []
    for word in _LEXICAL_WORD.findall(text.lower().replace("’", "'")):
        if _HAN_OR_KANA.match(word):
            words += [word[i : i + 2] for i in range(len(word) - 1)] or [word]
        elif not function_word(word):
            words.append(word)
    return tuple(words)


def stem(word: str) -> str:
    """A crude English stem, enough to match "orders" and "order's" with "order", "booked"
    with "book"."""
    word = word.removesuffix("'s")
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def lexical_match(question: Cues, unit_text: str) -> float:
    """0 to 1.5: the share of the question's content words the unit has, plus 0.5 when it has
    one of the question's rare tokens (read in the unit's first ``LEXICAL_CHARS``)."""
    if not question.words and not question.rare:
        return 0.0
    unit_text = unit_text[:LEXICAL_CHARS]
    lowered = unit_text.lower()
    rare = 0.5 if any(r in lowered for r in question.rare) else 0.0
    if not question.words:
        return rare
    words = {stem(w) for w in lexical_words(unit_text)}
    return rare + len(question.words & words) / len(question.words)
