"""What counts as a hit: the similarity threshold and the lexical guards.

Cosine similarity of sentence embeddings is blind to the details that make two questions want
different answers: "flights from NY to FL" and "from FL to NY", "is 7 prime" and "is 9 prime",
"can I" and "can't I", "convert celsius to kelvin" and "kelvin to celsius". Each guard below
extracts one such detail from both texts and forces a miss when it differs. They are cheap
(microseconds) and conservative: a guard that fires on a true paraphrase costs one upstream
call, a wrong hit costs a wrong answer.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from semcache.embedding import Reading


class Reason(StrEnum):
    """Why a lookup ended the way it did."""

    EXACT = "exact"
    SEMANTIC = "semantic"
    EMPTY_SCOPE = "empty_scope"
    NO_CANDIDATE = "no_candidate"
    BELOW_THRESHOLD = "below_threshold"
    NUMBER_MISMATCH = "number_mismatch"
    NEGATION_MISMATCH = "negation_mismatch"
    ENTITY_MISMATCH = "entity_mismatch"
    QUOTE_MISMATCH = "quote_mismatch"
    ORDER_MISMATCH = "order_mismatch"
    UNVERIFIED = "below_min_confidence"
    PROMPT_TOO_LONG = "prompt_exceeds_embedder_window"
    PROMPT_ILLEGIBLE = "prompt_illegible_to_embedder"
    OPAQUE_MISMATCH = "opaque_text_mismatch"

    @property
    def is_hit(self) -> bool:
        return self in (Reason.EXACT, Reason.SEMANTIC)


_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 10**6, "billion": 10**9, "first": 1, "second": 2, "third": 3, "fourth": 4,
    "fifth": 5, "twice": 2, "half": 0.5, "dozen": 12,
}  # fmt: skip
_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere",
    "cannot", "without", "unable", "non",
}  # fmt: skip
# Capitalised words that open clauses or are capitalised by convention, not names.
_NOT_ENTITIES = {
    "i", "i'm", "i've", "i'd", "i'll", "what", "why", "how", "when", "where", "who", "whom",
    "which", "whose", "is", "are", "was", "were", "do", "does", "did", "can", "could", "will",
    "would", "should", "shall", "may", "might", "must", "have", "has", "had", "the", "a", "an",
    "if", "in", "on", "at", "for", "to", "of", "and", "or", "but", "my", "your", "it", "this",
    "that", "there", "please", "tell", "give", "explain", "list", "write", "describe", "best",
    "good", "ok", "okay", "hi", "hello", "hey", "thanks", "yes", "no", "vs", "mr", "mrs", "dr",
}  # fmt: skip

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    """a an the of to in on at for from by with about as into onto over under than then and or
    but if so is are was were be been being am do does did done have has had having i me my
    mine you your yours we our us he him his she her it its they them their this that these
    those there here what why how when where who whom whose which can could should would will
    shall may might must get got some any one s t""".split()  # noqa: SIM905
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’\-]*|\d[\d,.]*\d|\d")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!:;\n]")
_QUOTED = re.compile(
    r'"([^"\n]{1,200})"|“([^”\n]{1,200})”|`([^`\n]{1,200})`|(?<!\w)\'([^\'\n]{2,200})\'(?!\w)'
)


@dataclass(frozen=True)
class TextFeatures:
    """The details of a text that the guards compare."""

    numbers: tuple[str, ...]  # in order of first appearance: "10 divided by 2" is not "2 by 10"
    negations: int  # "not", "no", "-n't", "without" …: one more or one fewer flips the meaning
    entities: tuple[str, ...]  # in order of first appearance, lower-cased
    words: frozenset[str]
    quoted: frozenset[str]


@lru_cache(maxsize=16384)
def features(text: str) -> TextFeatures:
    """Extract the guarded details of ``text`` (memoised: stored prompts recur)."""
    words = _WORD.findall(text)
    lowered = [_word_key(w) for w in words]
    found = [(m.start(), _canonical_number(m.group())) for m in _DIGITS.finditer(text)]
    for match in _WORD.finditer(text):
        value = _NUMBER_WORDS.get(match.group().lower())
        if value is not None:
            found.append((match.start(), _canonical_number(str(value))))
    numbers = tuple(dict.fromkeys(number for _, number in sorted(found)))
    negations = sum(w in _NEGATIONS or w.endswith("n't") for w in lowered)
    quoted = frozenset(
        " ".join(next(g for g in m if g).split()).lower() for m in _QUOTED.findall(text)
    )
    return TextFeatures(
        numbers=numbers,
        negations=negations,
        entities=_entities(text),
        words=frozenset(lowered),
        quoted=quoted,
    )


def _word_key(word: str) -> str:
    """Lower case, one apostrophe, no possessive: "France's" and "France" name the same."""
    key = word.lower().replace("’", "'")
    return key[:-2] if key.endswith("'s") and len(key) > 2 else key


def _canonical_number(token: str) -> str:
    token = token.replace(",", "")
    try:
        value = float(token)
    except ValueError:
        return token
    return str(int(value)) if value.is_integer() else repr(value)


def _entities(text: str) -> tuple[str, ...]:
    """Names: capitalised words that do not open a sentence, acronyms and mixed tokens.

    In Title Case Text every word is capitalised, so only acronyms and mixed tokens count there.
    """
    tokens: list[tuple[str, bool]] = []  # (word, opens a sentence)
    opens = True
    position = 0
    for match in _WORD.finditer(text):
        if _SENTENCE_END.search(text, position, match.start()):
            opens = True
        tokens.append((match.group(), opens))
        opens = False
        position = match.end()
    alphabetic = [w for w, _ in tokens if w[0].isalpha()]
    title_case = len(alphabetic) >= 4 and sum(w[0].isupper() for w in alphabetic) > 0.6 * len(
        alphabetic
    )
    seen: dict[str, None] = {}
    for word, opens_sentence in tokens:
        lowered = _word_key(word)
        if lowered in _NOT_ENTITIES or not word[0].isalpha():
            continue
        acronym = len(word) >= 2 and word.isupper()
        mixed = any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:])
        capitalised = word[0].isupper() and not opens_sentence and not title_case
        if acronym or mixed or capitalised:
            seen.setdefault(lowered, None)
    return tuple(seen)


@lru_cache(maxsize=16384)
def tokens_of(text: str) -> tuple[str, ...]:
    """Lower-cased word tokens, apostrophes kept inside words."""
    return tuple(_TOKEN.findall(text.lower().replace("’", "'")))


@lru_cache(maxsize=16384)
def content_words(text: str) -> tuple[str, ...]:
    """The tokens of ``text`` that are not function words, in order."""
    return tuple(t for t in tokens_of(text) if t not in _STOPWORDS)


_ROLE_WORDS = frozenset(
    ["from", "to", "into", "than", "over", "before", "after", "against", "vs", "versus"]
)
_ROLE_WINDOW = 3


def _roles(text: str) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    """For each word that gives roles (from, to, than, …), the content words just before it
    and just after it."""
    tokens = tokens_of(text)
    out = []
    for i, token in enumerate(tokens):
        if token in _ROLE_WORDS:
            before = frozenset(
                t for t in tokens[max(0, i - _ROLE_WINDOW) : i] if t not in _STOPWORDS
            )
            after = frozenset(
                t for t in tokens[i + 1 : i + 1 + _ROLE_WINDOW] if t not in _STOPWORDS
            )
            out.append((token, before, after))
    return out


def swapped_order(query: str, candidate: str) -> bool:
    """Whether two words trade places around the same role word: "flights from ny to fl"
    against "cheap flights from fl to ny", "is rust faster than go" against "is go faster than
    rust", "convert celsius to kelvin" against "kelvin to celsius"."""
    roles_c = _roles(candidate)
    for word, before_q, after_q in _roles(query):
        for other, before_c, after_c in roles_c:
            if other != word:
                continue
            moved_back = before_q & after_c
            moved_forward = after_q & before_c
            if any(x != y for x in moved_back for y in moved_forward):
                return True
    return False


def guard_mismatch(query: str, candidate: str) -> Reason | None:
    """The first guard on which ``query`` and ``candidate`` differ, or ``None``."""
    q, c = features(query), features(candidate)
    if q.numbers != c.numbers:
        return Reason.NUMBER_MISMATCH
    if q.negations != c.negations:
        return Reason.NEGATION_MISMATCH
    if q.quoted != c.quoted:
        return Reason.QUOTE_MISMATCH
    if _entities_differ(q, c):
        return Reason.ENTITY_MISMATCH
    if swapped_order(query, candidate):
        return Reason.ORDER_MISMATCH
    return None


def _entities_differ(q: TextFeatures, c: TextFeatures) -> bool:
    # A name in one text that the other does not mention at all (in any case) is a different
    # subject; names both mention in a different order are a swap ("from NY to FL").
    if any(e not in c.words for e in q.entities) or any(e not in q.words for e in c.entities):
        return True
    shared_q = [e for e in q.entities if e in c.entities]
    shared_c = [e for e in c.entities if e in q.entities]
    return shared_q != shared_c


MAX_UNBROKEN_RUN = 100  # characters without a space: hashes, keys, base64, minified code
MIN_KNOWN_WORDS = 2  # "yes" and "no" are close in embedding space and opposite in meaning
_UNBROKEN = re.compile(rf"\S{{{MAX_UNBROKEN_RUN + 1},}}")


def illegible(reading: Reading) -> bool:
    """Whether the embedding model sees too little of a prompt for its vector to stand for
    it, so that only an exact match may answer it: fewer than ``MIN_KNOWN_WORDS`` words it
    knows (emoji only, one word), or more unknown tokens than known words (a script it was not
    trained on)."""
    return reading.known_words < MIN_KNOWN_WORDS or reading.unknown > reading.known_words


def generic_reading(prompt: str) -> Reading:
    """A :class:`Reading` for an embedder without a tokenizer: words are runs of letters or
    digits; symbols (emoji, pictographs) and unbroken runs over ``MAX_UNBROKEN_RUN``
    characters are opaque."""
    opaque = [m.group() for m in _UNBROKEN.finditer(prompt)]
    opaque += [c for c in prompt if unicodedata.category(c) == "So"]
    return Reading(
        tokens=len(prompt.split()),
        unknown=len(opaque),
        known_words=len(_TOKEN.findall(prompt.lower())),
        opaque=tuple(opaque),
    )


def with_unbroken_runs(reading: Reading, prompt: str) -> Reading:
    """``reading`` with every unbroken run over ``MAX_UNBROKEN_RUN`` characters opaque too: a
    tokenizer reads them as words, but no sentence model tells two such strings apart."""
    runs = tuple(m.group() for m in _UNBROKEN.finditer(prompt))
    if not runs:
        return reading
    return dataclasses.replace(reading, opaque=reading.opaque + runs)
