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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import dropwhile, takewhile

from semcache.embedding import LETTER_RUN, Reading, folded
from semcache.memo import text_memo


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
    OPPOSITE_MISMATCH = "opposite_mismatch"  # a word where the other text has its opposite
    ORDER_MISMATCH = "order_mismatch"
    UNREAD_MISMATCH = "unread_words_mismatch"  # words differ that the model reads in pieces
    UNVERIFIED = "below_min_confidence"
    ERROR_BOUND = "beyond_error_bound"  # its score is below the one max_error_rate allows
    PROMPT_TOO_LONG = "prompt_exceeds_embedder_window"
    PROMPT_ILLEGIBLE = "prompt_illegible_to_embedder"
    OPAQUE_MISMATCH = "opaque_text_mismatch"
    MODEL_BUSY = "model_busy"  # the semantic tier skipped: a long wait for the model, few hits

    @property
    def is_hit(self) -> bool:
        return self in (Reason.EXACT, Reason.SEMANTIC)

    @property
    def near_miss(self) -> bool:
        """A miss that a lower threshold could turn into a hit (what degraded mode relaxes):
        a guard or an unreadable prompt stays in force whatever the threshold."""
        return self in (Reason.BELOW_THRESHOLD, Reason.UNVERIFIED)


_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 10**6, "billion": 10**9, "first": 1, "second": 2, "third": 3, "fourth": 4,
    "fifth": 5, "twice": 2, "half": 0.5, "dozen": 12,
}  # fmt: skip
# "Without" negates as "not" does: "so you don't have to wait" is "without having to wait",
# "a no-code builder" one "without any coding", "coffee with sugar" not "without sugar".
_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere",
    "cannot", "unable", "without", "absence",
}  # fmt: skip
# A negated word of negative sense says the positive: "don't forget" is "remember".
_NEGATED_OPPOSITE = re.compile(r"\b(?:do ?n[o'’]?t|never) (?:forget|hesitate|miss|fail)\b", re.I)
# "... or not?", "why or why not?", "whether or not": both answers asked for, nothing negated.
_EITHER_WAY = re.compile(r"\bwhether or not\b|\bor (?:why )?not\b(?=\s*(?:[?.!,;:)]|$))", re.I)
# Number words that are not counts when followed by one of these ("one can", "one of").
_NOT_COUNTED_AFTER_ONE = frozenset(
    "can could should would will must may might shall needs has is does of another go".split()  # noqa: SIM905
)
_CLAUSE_END = re.compile(r"[.,;:!?()\[\]]")
_ONE_STANDS_FOR_A_NOUN_AFTER = frozenset(
    "a an the this that each any every which another no some whichever "  # noqa: SIM905
    "my your his her its our their".split()
)
# "1) download, 2) prepare" and "2. Then" at the start of a line enumerate; they count nothing.
_LIST_MARKER = re.compile(r"\d{1,2}\)(?=\s)|(?<![^\n])\d{1,2}\.(?=\s)|(?<=\n)[ \t]*\d{1,2}\.(?=\s)")
_ANSWER_NO = re.compile(r"\s*no\s*[,.!]", re.IGNORECASE)
# A participle and "by": "was backed by", "is written by", also the irregular "bought",
# "paid", "sung", "struck", "shot", "cut".
_PASSIVE = re.compile(
    r"\b(?:is|are|was|were|be|been|being|gets|got)\s+(?:\w+ly\s+)?"
    r"(?P<participle>\w+(?:ed|en|wn|lt|de|ght|id|ung|ck|ot|ut|it))\s+by\b",
    re.IGNORECASE,
)
# Capitalised words that open clauses or are capitalised by convention, not names.
_NOT_ENTITIES = {
    "i", "i'm", "i've", "i'd", "i'll", "what", "why", "how", "when", "where", "who", "whom",
    "which", "whose", "is", "are", "was", "were", "do", "does", "did", "can", "could", "will",
    "would", "should", "shall", "may", "might", "must", "have", "has", "had", "the", "a", "an",
    "if", "in", "on", "at", "for", "to", "of", "and", "or", "but", "my", "your", "it", "this",
    "that", "there", "please", "tell", "give", "explain", "list", "write", "describe", "best",
    "good", "ok", "okay", "hi", "hello", "hey", "thanks", "yes", "no", "vs", "mr", "mrs", "dr",
    # Titles and company forms, which a rephrasing adds or drops around the same name:
    # "Gov. Schwarzenegger" / "Governor Schwarzenegger", "Microsoft Corp." / "Microsoft".
    "ms", "prof", "gov", "governor", "president", "sen", "senator", "rep", "minister", "prime",
    "secretary", "chairman", "mayor", "gen", "general", "sir", "judge", "chancellor", "corp",
    "inc", "ltd", "llc", "plc", "co",
}  # fmt: skip

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    """a an the of to in on at for from by with about as into onto over under than then and or
    but if so is are was were be been being am do does did done have has had having i me my
    mine you your yours we our us he him his she her it its they them their this that these
    those there here what why how when where who whom whose which can could should would will
    shall may might must get got some any one s t""".split()  # noqa: SIM905
)
# A hyphen joins letters ("twenty-five", "all-on-four"); before a digit it sets off a number,
# which the guards read as one ("GPT-4" / "GPT-3").
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’]*(?:-[A-Za-z][A-Za-z0-9'’]*)*|\d[\d,.]*\d|\d")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
# Single letters joined by dots: "U.S.", "F.B.I.", "e.g.". Read as one word ("US", "FBI"), so
# that "U.N." is the "UN" that "United Nations" abbreviates, and its dots end no sentence.
_DOTTED_LETTERS = re.compile(r"(?<![\w.])[A-Za-z](?:\.[A-Za-z])+\.?(?!\w)")
_SENTENCE_END = re.compile(r"[.?!:;\n]")
_QUOTED = re.compile(
    r'"([^"\n]{1,200})"|“([^”\n]{1,200})”|`([^`\n]{1,200})`|(?<!\w)\'([^\'\n]{2,200})\'(?!\w)'
)


@dataclass(frozen=True)
class TextFeatures:
    """The details of a text that the guards compare."""

    numbers: tuple[str, ...]  # in order of first appearance: "10 divided by 2" is not "2 by 10"
    negations: int  # "not", "no", "-n't", "without" …: an odd number negates the sentence
    privative: bool  # "non-dairy milk" against "dairy milk"
    entities: tuple[str, ...]  # in order of first appearance, lower-cased
    names: tuple[tuple[str, int], ...]  # (name as written, word position) of each occurrence
    words: frozenset[str]
    quoted: frozenset[str]
    passive: bool  # "B is backed by A" names A and B in the other order than "A backs B"


_DEGREES = re.compile(r"°\s?([CF])\b")
_SCALES = {"C": "Celsius", "F": "Fahrenheit"}


def _spelt_alike(text: str) -> str:
    """``text`` as the guards read its words and names: letters joined by dots as one word (see
    :data:`_DOTTED_LETTERS`), and degrees with their scale spelt out ("30°C" is "30 degrees
    Celsius")."""
    text = _DOTTED_LETTERS.sub(lambda m: m.group().replace(".", ""), text)
    return _DEGREES.sub(lambda m: f" degrees {_SCALES[m.group(1)]}", text)


@text_memo()
def _words_read(text: str) -> tuple[re.Match[str], ...]:
    """The words of ``text`` as the guards read them (:func:`_spelt_alike`), in order; a name's
    position is its index here (memoised: several guards read the same text)."""
    return tuple(_WORD.finditer(_spelt_alike(text)))


@text_memo()
def features(text: str) -> TextFeatures:
    """Extract the guarded details of ``text`` (memoised: stored prompts recur)."""
    words = [m.group() for m in _words_read(text)]
    lowered = [_word_key(w) for w in words]
    numbers = tuple(dict.fromkeys(number for _, number in _numbers_found(text)))
    negations = (
        _negations(lowered) - len(_NEGATED_OPPOSITE.findall(text)) - len(_EITHER_WAY.findall(text))
    )
    if _ANSWER_NO.match(text):
        negations -= 1  # "No, it does not exist": the answer word, not a second negation
    quoted = frozenset(
        " ".join(next(g for g in m if g).split()).lower() for m in _QUOTED.findall(text)
    )
    entities, names = _entities(_spelt_alike(text))
    return TextFeatures(
        numbers=numbers,
        negations=negations,
        privative=any(w == "non" or w.startswith("non-") for w in lowered),
        entities=entities,
        names=names,
        words=frozenset(lowered),
        quoted=quoted,
        passive=bool(_PASSIVE.search(text)),
    )


# Prefixes that negate the word they open ("impossible", "unavailable", "illegal"), and words
# that say "not" + another word ("optional" is "not required").
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis")
_MIN_NEGATED_BASE = 4  # letters: "into" is no negated "to"
_NEGATED_MEANING = {
    "optional": frozenset(["required", "mandatory", "compulsory"]),
    # "Different from" is "not the same as"; "is A the same as B" and "is A different from B"
    # want opposite answers ("yes, they are the same" answers only one of them).
    "different": frozenset(["same"]),
}


def _negated_words(text: TextFeatures, other: TextFeatures, other_text: str) -> int:
    """Words of ``text`` that stand for a word of ``other`` negated, each one more negation:
    by their prefix where ``text`` lacks the word itself ("it is impossible" / "it is not
    possible" agree, "is it possible" / "is it impossible" do not, and "advantages and
    disadvantages" negates nothing), or by their meaning ("optional" / "not required" agree,
    "optional" / "required" do not). A prefix written apart in ``other_text`` is no negation
    ("infront" / "in front")."""
    count = 0
    for word in text.words - other.words:
        if _NEGATED_MEANING.get(word, frozenset()) & other.words:
            count += 1
            continue
        for prefix in _NEGATING_PREFIXES:
            base = word[len(prefix) :]
            if (
                word.startswith(prefix)
                and len(base) >= _MIN_NEGATED_BASE
                and base not in _STOPWORDS
                and base in other.words
                and base not in text.words
                and f"{prefix} {base}" not in other_text.lower()  # "infront" / "in front"
            ):
                count += 1
                break
    return count


def _numbers_found(text: str) -> list[tuple[int, str]]:
    """The numbers of ``text``, each with the position where it starts, in order."""
    digits: dict[int, float] = {}  # numbers written in digits, by position
    found: list[tuple[int, str]] = []  # and digit runs that are no number: "2.10.0"
    for m in _DIGITS.finditer(text):
        if m.group() == "00" and text[m.start() - 1 : m.start()] == ":":
            continue  # "9:00" is 9 o'clock: "9 am", "9:00 am"
        if not _LIST_MARKER.match(text, m.start()):
            try:
                digits[m.start()] = float(m.group().replace(",", ""))
            except ValueError:
                found.append((m.start(), _canonical_number(m.group())))
    found += _number_values(text, digits)
    # One written as a word, alone, is what "a", "an" and "the" say too ("use one column" / "use
    # a single column"; "the first step" / "the initial step"); beside another number ("one or
    # two") it counts. "1st" is "first", but in a date it is 1 ("January 1st", "January 1").
    if all(n == "1" for _, n in found):
        found = [
            (at, n)
            for at, n in found
            if text[at].isdigit()
            and (text[at + 1 : at + 3].lower() != "st" or _after_a_month(text, at))
        ]
    return sorted(found)


_LONGEST_MONTH = len("september. ")
_WORD_BEFORE = re.compile(r"([A-Za-z]+)\.?\s*$")


def _after_a_month(text: str, position: int) -> bool:
    """Whether the word right before ``position`` names a month ("Jan", "January"). Only the
    few characters before it are read: a search back from the end of a long text would try
    every start."""
    before = _WORD_BEFORE.search(text[max(0, position - _LONGEST_MONTH) : position])
    word = "" if before is None else before.group(1).lower()
    return len(word) >= 3 and any(month.startswith(word) for month in _MONTHS)


def _numbers_moved_with_their_words(query: str, candidate: str) -> bool:
    """Whether the same numbers, each once, stand in another order only because each moved
    with a word it is said of: "closed at $45.20, down 30 cents" / "closed down 30 cents at
    $45.20", "page 5 of chapter 3" / "chapter 3, page 5". Each keeps the word (or currency
    sign) right before or right after it, and no two numbers share one. "10 divided by 2" /
    "2 divided by 10" and "2 adults and 3 children" / "3 adults and 2 children" keep none; two
    numbered phrases that trade places ("at 10 am, back at 2 pm" / "at 2 pm, back at 10 am")
    are left to the order guards, as words are."""
    attached_q, attached_c = _number_words(query), _number_words(candidate)
    if attached_q is None or attached_c is None or attached_q.keys() != attached_c.keys():
        return False
    return all(attached_q[n] & attached_c[n] for n in attached_q)


def _number_words(text: str) -> dict[str, set[str]] | None:
    """Each number of ``text`` with the words right before and after it that are no function
    words ("<word", "word>", "<$"), when every number occurs once and no two share one."""
    found = _numbers_found(text)
    values = [value for _, value in found]
    if not found or len(set(values)) != len(values):
        return None
    matches = list(_WORD.finditer(text))
    starts = {m.start(): i for i, m in enumerate(matches)}
    attached: dict[str, set[str]] = {}
    for at, value in found:
        i = starts.get(at)
        if i is None:
            return None
        near: set[str] = set()
        if text[at - 1 : at] in _CURRENCY_SIGNS:
            near.add("<" + text[at - 1])
        elif i and matches[i - 1].group().lower() not in _STOPWORDS:
            near.add("<" + matches[i - 1].group().lower())
        j = i + 1
        while j < len(matches) and _part_of_number(matches[j].group().lower()):
            j += 1
        if j < len(matches) and matches[j].group().lower() not in _STOPWORDS:
            near.add(matches[j].group().lower() + ">")
        if text[matches[j - 1].end() : matches[j - 1].end() + 1] == "%":
            near.add("%>")
        if not near:
            return None
        attached[value] = near
    words = [w for near in attached.values() for w in near]
    return attached if len(words) == len(set(words)) else None


def _part_of_number(word: str) -> bool:
    return (
        word in _MAGNITUDES
        or word in _ATTACHED_MAGNITUDES
        or word in _MONEY_MAGNITUDES
        or word.split("-")[0] in _UNITS
    )


def _negations(lowered: Sequence[str]) -> int:
    """Negating words; one repeated after "and"/"or" counts once ("without a GPU and without
    internet" is "without a GPU or internet")."""
    count, last = 0, ""
    for i, word in enumerate(lowered):
        if word in _NEGATIONS or word.endswith("n't") or word.startswith("no-"):
            if not (word == last and i and lowered[i - 1] in ("and", "or", "nor")):
                count += 1
            last = word
    return count


_MAGNITUDES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_ATTACHED_MAGNITUDES = {"bn": 10**9, "mn": 10**6}  # "$3bn"
# After a currency sign a single letter is a magnitude too ("$18.5m", "£3b", "€50k"); elsewhere
# it may be a unit ("a 5m wall", "a 10k run").
_MONEY_MAGNITUDES = {"b": 10**9, "m": 10**6, "k": 1000}
_CURRENCY_SIGNS = frozenset("$€£¥")
_ORDINALS_AND_MORE = frozenset(
    {"first", "second", "third", "fourth", "fifth", "twice", "half", "dozen"}
)
_FRACTIONS = frozenset({"third", "fourth", "fifth"})  # after "a" and before "of": a share
_UNITS = {  # cardinals that add up: "twenty" "five"
    w: v for w, v in _NUMBER_WORDS.items() if w not in _MAGNITUDES and w not in _ORDINALS_AND_MORE
}


def _pronoun_one(matches: Sequence[re.Match[str]], i: int) -> bool:
    """Whether the "one" at ``matches[i]`` stands for a noun: after a determiner ("this one",
    "which one") or a determiner and one word ("a new one", "the right one"), and not before a
    noun it counts ("the one person", "a single one-page form" still count): the clause ends
    there, or a function word or an -ing/-ed form follows ("a new one using ...")."""
    before = [m.group().lower() for m in matches[max(0, i - 2) : i]]
    after_determiner = bool(before) and (
        before[-1] in _ONE_STANDS_FOR_A_NOUN_AFTER
        or (len(before) == 2 and before[0] in _ONE_STANDS_FOR_A_NOUN_AFTER)
    )
    if not after_determiner:
        return False
    if i + 1 == len(matches):
        return True
    word, following = matches[i], matches[i + 1]
    if _CLAUSE_END.search(word.string, word.end(), following.start()):
        return True
    after = following.group().lower()
    return after in _STOPWORDS or after.endswith(("ing", "ed"))


def _number_values(text: str, digits: dict[int, float]) -> list[tuple[int, str]]:
    """Numbers written in digits, in words or both, each as one value: "one hundred" and "100",
    "3 billion", "3bn" and "3,000,000,000", "twenty-five" and "25". A magnitude with no count
    before it ("several thousand", "hundreds of") says how many only roughly: no number."""
    matches = list(_WORD.finditer(text))
    found: list[tuple[int, str]] = []
    i = 0
    while i < len(matches):
        match = matches[i]
        start = match.start()
        if start in digits:
            value = digits[start]
            i += 1
            following = matches[i] if i < len(matches) else None
            if following is not None:
                word = following.group().lower()
                attached = following.start() == match.end()
                if attached and word in _ATTACHED_MAGNITUDES:
                    value *= _ATTACHED_MAGNITUDES[word]
                    i += 1
                elif (
                    attached
                    and word in _MONEY_MAGNITUDES
                    and text[start - 1 : start] in _CURRENCY_SIGNS
                ):
                    value *= _MONEY_MAGNITUDES[word]
                    i += 1
                elif not attached and word in _MAGNITUDES:
                    value *= _MAGNITUDES[word]
                    i += 1
            found.append((start, _canonical_number(repr(value))))
            continue
        parts = match.group().lower().split("-")  # "twenty-five"; "two-step" counts two
        word = parts[0]
        before = matches[i - 1].group().lower() if i else ""
        after = matches[i + 1].group().lower() if i + 1 < len(matches) else ""
        if word not in _NUMBER_WORDS or (word in _MAGNITUDES and before not in ("a", "one")):
            i += 1
            continue
        if word == "one" and (after in _NOT_COUNTED_AFTER_ONE or _pronoun_one(matches, i)):
            i += 1
            continue  # "one can call", "one of them", "a new one": a pronoun, not a count
        if word == "first" and (after.endswith("ing") or before in ("at", "by", "will", "must")):
            i += 1
            continue  # "by first creating", "at first": when, not which
        if word in _FRACTIONS and before in ("a", "one") and after == "of":
            if found and found[-1][0] == matches[i - 1].start():
                found.pop()  # "one third": the "one" is the fraction's
            found.append((start, _canonical_number(repr(1 / _NUMBER_WORDS[word]))))
            i += 1
            continue  # "a third of the students" is a share, not "three of the students"
        if word not in _UNITS and word not in _MAGNITUDES:
            found.append((start, _canonical_number(str(_NUMBER_WORDS[word]))))
            i += 1
            continue
        total, current = 0.0, 0.0
        while i < len(matches):
            words = matches[i].group().lower().split("-")
            numeric = list(takewhile(lambda w: w in _UNITS or w in _MAGNITUDES, words))
            if words == ["and"]:
                if not total + current or i + 1 >= len(matches):
                    break
                if matches[i + 1].group().lower().split("-")[0] not in _UNITS:
                    break  # "one and the other": "and" joins numbers only to a number
                i += 1
                continue
            if not numeric:
                break
            for w in numeric:
                if w in _MAGNITUDES:
                    scale = _MAGNITUDES[w]
                    if scale == 100:
                        current = (current or 1) * 100
                    else:
                        total += (current or 1) * scale
                        current = 0
                else:
                    current += _UNITS[w]
            i += 1
            if len(numeric) < len(words):
                break  # "two-step": the count alone
        found.append((start, _canonical_number(repr(total + current))))
    return found


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


def _entities(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """Names, and where each occurs.

    Names are capitalised words that do not open a sentence, acronyms and mixed tokens. In
    Title Case Text every word is capitalised, so only acronyms and mixed tokens are names
    there; its other capitalised words still mark positions, for the order check (a role swap
    in a title is still a swap).
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
    # In text not written in capitals, a common word in capitals is an acronym: "US", "IT".
    capitals = [w for w in alphabetic if len(w) >= 2 and w.isupper()]
    shouted = len(capitals) * 2 > len([w for w in alphabetic if len(w) >= 2])
    seen: dict[str, None] = {}
    occurrences: list[tuple[str, int]] = []
    for index, (written, opens_sentence) in enumerate(tokens):
        word = _name_head(written)
        lowered = _word_key(word)
        acronym = len(word) >= 2 and word.isupper()
        common = lowered in _NOT_ENTITIES or lowered in _STOPWORDS
        spelt_as_acronym = acronym and not shouted and lowered in _STOPWORDS
        if not word[0].isalpha() or (common and not spelt_as_acronym):
            continue
        mixed = any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:])
        capitalised = word[0].isupper() and not opens_sentence
        if acronym or mixed or (capitalised and not title_case):
            seen.setdefault(lowered, None)
        if acronym or mixed or capitalised:
            occurrences.append((word, index))
    return tuple(seen), tuple(occurrences)


def _name_head(word: str) -> str:
    """A capitalised word without the lower-case parts hyphened to it: "York-based" is York,
    "Obama-era" is Obama; "Coca-Cola" stays whole."""
    if not word[:1].isupper() or "-" not in word:
        return word
    parts = word.split("-")
    kept = [parts[0]]
    for part in parts[1:]:
        if not part[:1].isupper():
            break
        kept.append(part)
    return "-".join(kept)


@text_memo()
def tokens_of(text: str) -> tuple[str, ...]:
    """Lower-cased word tokens, apostrophes kept inside words."""
    return tuple(_TOKEN.findall(text.lower().replace("’", "'")))


def function_word(token: str) -> bool:
    """Whether a lower-cased token is an (English) function word: "the", "of", "my" …"""
    return token in _STOPWORDS


@text_memo()
def content_words(text: str) -> tuple[str, ...]:
    """The tokens of ``text`` that are not function words, in order."""
    return tuple(t for t in tokens_of(text) if t not in _STOPWORDS)


def same_content(query: str, candidate: str) -> bool:
    """Whether two texts have the same content words, negations aside: one is the other with
    words moved, names exchanged or the sense negated ("how do I recover a lost Gmail
    password" / "how don't I recover …" / "how do I password a lost Gmail recover")."""

    def kept(text: str) -> list[str]:
        return sorted(
            w for w in content_words(text) if w not in _NEGATIONS and not w.endswith("n't")
        )

    q = kept(query)
    return bool(q) and q == kept(candidate)


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


# Words that join two things without giving either a role: "between A and B" is "between B
# and A". Determiners are one word for context: "the A" and "a A" stand in the same slot.
_COORDINATORS = frozenset(["and", "or", "nor", "vs", "versus", "plus"])
_COORDINATED_GAP = 3  # words at most between two joined things: "A and B", "A gas and B gas"
_DETERMINERS = frozenset(["a", "an", "the", "this", "that", "these", "those"])
_EXCHANGED_CONTEXTS = 3  # of the four neighbours two units have: both left, both right
# Words between two things that leave their roles as they were: "how important is money" is
# "money is important" (a question's inversion), not a swap.
_AUXILIARIES = frozenset({
    "is", "are", "was", "were", "be", "been", "am", "do", "does", "did", "can", "could",
    "should", "would", "will", "shall", "may", "might", "must", "has", "have", "had", "not",
})  # fmt: skip
# Relations that are the same both ways round: "the difference between A and B", "how is A
# different from B", "India's relationship with Bangladesh".
_SYMMETRIC = frozenset({
    "between", "difference", "differences", "different", "differ", "differs", "similar",
    "similarity", "same", "compare", "compared", "comparison", "versus", "vs", "relationship",
    "relation", "equal", "equivalent",
})  # fmt: skip


def _role_tokens(text: str) -> tuple[str, ...]:
    return tuple(
        "the" if t in _DETERMINERS else t[:-2] if t.endswith("'s") else t for t in tokens_of(text)
    )


@dataclass(frozen=True)
class _Unit:
    """A run of content words that both texts have once each and write together."""

    query: tuple[int, int]  # first and last token position in the query
    candidate: tuple[int, int]


def _aligned_units(q: tuple[str, ...], c: tuple[str, ...]) -> list[_Unit]:
    count_q, count_c = Counter(q), Counter(c)
    once_q = {t: i for i, t in enumerate(q) if count_q[t] == 1 and t not in _STOPWORDS}
    once_c = {t: i for i, t in enumerate(c) if count_c[t] == 1 and t not in _STOPWORDS}
    units: list[_Unit] = []
    for word in sorted(once_q.keys() & once_c.keys(), key=once_q.__getitem__):
        i, j = once_q[word], once_c[word]
        if units and units[-1].query[1] == i - 1 and units[-1].candidate[1] == j - 1:
            last = units[-1]
            units[-1] = _Unit((last.query[0], i), (last.candidate[0], j))
        else:
            units.append(_Unit((i, i), (j, j)))
    return units


def _context(
    tokens: tuple[str, ...], span: tuple[int, int], other: tuple[int, int]
) -> tuple[str, str]:
    """What stands on either side of ``span``: the function words up to and including the
    nearest content word ("directed by", "was appointed"), or the text's edge ("^", "$"). The
    ``other`` unit of the pair shows as "·", so that "from A to B" and "from B to A" give each
    the same neighbours."""

    def shown(i: int) -> str:
        return "·" if other[0] <= i <= other[1] else tokens[i]

    first, last = span
    start = first - 1
    while start >= 0 and tokens[start] in _STOPWORDS:
        start -= 1
    end = last + 1
    while end < len(tokens) and tokens[end] in _STOPWORDS:
        end += 1
    left = ["^"] * (start < 0) + [shown(i) for i in range(max(start, 0), first)]
    right = [shown(i) for i in range(last + 1, min(end + 1, len(tokens)))]
    return " ".join(left), " ".join(right + ["$"] * (end >= len(tokens)))


def roles_exchanged(query: str, candidate: str) -> bool:
    """Whether two things trade places between the texts: each stands where the other stood,
    between the same neighbouring words. "the manager of Arsenal was appointed to Chelsea" /
    "... of Chelsea was appointed to Arsenal", "German brewery of regional style" / "regional
    brewery of German style", "why do dogs hate cats" / "why do cats hate dogs".

    A rephrasing moves words with their neighbours ("in Python, how do I ..." / "how do I ...
    in Python"), and active and passive give them new ones ("the committee appointed her" /
    "she was appointed by the committee"), so neither exchanges contexts. Things joined only
    by "and", "or", "vs" ("between A and B") trade places freely.
    """
    q, c = _role_tokens(query), _role_tokens(candidate)
    count_q, count_c = Counter(q), Counter(c)
    units = _aligned_units(q, c)
    for n, u in enumerate(units):
        for v in units[n + 1 :]:
            if u.candidate[0] < v.candidate[0]:
                continue  # the same order in both
            # Between them, past determiners and the words said of both ("information" in
            # "information systems and information technology").
            gap_q = [t for t in q[u.query[1] + 1 : v.query[0]] if t != "the" and count_q[t] == 1]
            gap_c = [
                t for t in c[v.candidate[1] + 1 : u.candidate[0]] if t != "the" and count_c[t] == 1
            ]
            if any(
                not gap or (gap[-1] in _COORDINATORS and len(gap) <= _COORDINATED_GAP)
                for gap in (gap_q, gap_c)
            ):
                continue  # "A and B", "A gas and B gas": joined, not given roles
            if all(t in _AUXILIARIES for t in (*gap_q, *gap_c)):
                continue
            uq_left, uq_right = _context(q, u.query, v.query)
            vq_left, vq_right = _context(q, v.query, u.query)
            uc_left, uc_right = _context(c, u.candidate, v.candidate)
            vc_left, vc_right = _context(c, v.candidate, u.candidate)
            relation = {*gap_q, *gap_c, *uq_left.split(), *vc_left.split()}
            if relation & _SYMMETRIC:
                continue  # "between A and B", "A different from B": the same both ways
            # A side where both had the same neighbour ("audio files", "audio feature") shows
            # nothing trading places.
            left = (uq_left != vq_left) * ((uq_left == vc_left) + (vq_left == uc_left))
            right = (uq_right != vq_right) * ((uq_right == vc_right) + (vq_right == uc_right))
            if left + right >= _EXCHANGED_CONTEXTS:
                return True
            # Two modifiers of the same word: "a state court ... the federal court".
            same_right = len({uq_right, vq_right, uc_right, vc_right}) == 1
            same_left = len({uq_left, vq_left, uc_left, vc_left}) == 1
            if (left == 2 and same_right) or (right == 2 and same_left):
                return True
    return False


def guard_mismatch(query: str, candidate: str) -> Reason | None:
    """The first guard on which ``query`` and ``candidate`` differ, or ``None``."""
    q, c = features(query), features(candidate)
    if q.numbers != c.numbers and not (
        sorted(q.numbers) == sorted(c.numbers) and _numbers_moved_with_their_words(query, candidate)
    ):
        return Reason.NUMBER_MISMATCH
    if (q.negations + _negated_words(q, c, candidate)) % 2 != (
        c.negations + _negated_words(c, q, query)
    ) % 2 or q.privative != c.privative:
        return Reason.NEGATION_MISMATCH
    if _quotes_differ(q.quoted, candidate) or _quotes_differ(c.quoted, query):
        return Reason.QUOTE_MISMATCH
    if _opposite_words(q, c):
        return Reason.OPPOSITE_MISMATCH
    if _names_missing(q, candidate) or _names_missing(c, query):
        return Reason.ENTITY_MISMATCH
    swap = _swap(query, q, candidate, c)
    # A clause or phrase moved whole to the other end moves names and roles with it: "in
    # Paris, Smith met Jones" / "Smith met Jones in Paris".
    if swap is not None and reworded(query, candidate):
        return None
    return swap


# Words that state the opposite fact in the same slot: a direction, a movement, a state, an
# end of a scale, a season, a sex or a kin. Left out: converses, which say the same with the
# roles turned round ("someone sends me money" / "I receive money", "A bought it from B" / "B
# sold it to A", "won against" / "lost to", "X before Y" / "Y after X", "her husband" / "his
# wife"); comparisons a question asks either way round ("is A better / worse than B", "the
# least painful / the most painless"); "good" / "bad" in "is it good / bad to ..."; particles
# that phrasal verbs own ("in" / "out", "on" / "off"); and words an idiom takes either way
# ("hours of sleep a day / a night", "get high").
_OPPOSITE_PAIRS = """north south, northern southern, east west, eastern western, northeast
    southwest, northwest southeast, northeastern southwestern, northwestern southeastern,
    rise fall, rises falls, rose fell, rising falling, risen fallen, increase decrease,
    increases decreases, increased decreased, increasing decreasing, gain lose, gains loses,
    gained lost, upload download, uploaded downloaded, uploading downloading, encrypt decrypt,
    encrypted decrypted, encode decode, encoded decoded, encoding decoding, enable disable,
    enabled disabled, deposit withdraw, deposits withdrawals, deposit withdrawal,
    online offline, uppercase lowercase, ascending descending, inside outside, summer winter,
    morning evening, yesterday tomorrow, sunrise sunset, higher lower, highest lowest,
    upper lower, best worst, man woman, men women, boy girl, boys girls, male female,
    brother sister, brothers sisters, father mother, son daughter, sons daughters, king queen,
    uncle aunt, start stop, love hate, loves hates, largest smallest, biggest smallest,
    fastest slowest, longest shortest, tallest shortest, oldest youngest, richest poorest,
    maximum minimum, max min""".split(",")  # noqa: SIM905


def _opposites(pairs: list[str]) -> dict[str, frozenset[str]]:
    """Each word of ``pairs`` ("north south") with its opposites, both ways round."""
    table: dict[str, set[str]] = {}
    for pair in pairs:
        a, b = pair.split()
        table.setdefault(a, set()).add(b)
        table.setdefault(b, set()).add(a)
    return {word: frozenset(others) for word, others in table.items()}


_OPPOSITE = _opposites(_OPPOSITE_PAIRS)


def _opposite_words(q: TextFeatures, c: TextFeatures) -> bool:
    """Whether one text has a word where the other has its opposite, and neither has both:
    "flooding across southern England" / "... northern England", "shares rose" / "shares
    fell", "how do I enable" / "disable two-factor authentication"."""
    only_c = c.words - q.words
    return any(
        not _OPPOSITE.get(word, frozenset()).isdisjoint(only_c) for word in q.words - c.words
    )


def _swap(query: str, q: TextFeatures, candidate: str, c: TextFeatures) -> Reason | None:
    """The order guards: names or roles that trade places."""
    # Order only tells a swap from a paraphrase when the words are (nearly) the same: "Google
    # bought YouTube" / "YouTube bought Google". A rephrasing reorders freely.
    same_words = _overlap(query, candidate) >= _SAME_WORDS
    # The two sides of a symmetric relation trade places freely: "A vs B" / "B vs A".
    if (
        same_words
        and q.passive == c.passive
        and _names_swapped(*_role_names(query, q, candidate, c))
        and not _symmetric_exchange(query, candidate)
        and not _names_kept_their_neighbours(query, q, candidate, c)
    ):
        return Reason.ENTITY_MISMATCH
    if same_words and swapped_order(query, candidate) and not _symmetric_exchange(query, candidate):
        return Reason.ORDER_MISMATCH
    if same_words and q.passive == c.passive and roles_exchanged(query, candidate):
        return Reason.ORDER_MISMATCH
    if q.passive == c.passive and (reordered(query, candidate) or framed_swap(query, candidate)):
        return Reason.ORDER_MISMATCH
    if q.passive and not c.passive and voice_swapped(query, candidate):
        return Reason.ORDER_MISMATCH
    if c.passive and not q.passive and voice_swapped(candidate, query):
        return Reason.ORDER_MISMATCH
    return None


# Words that open a clause inside a sentence: a subject before them is another clause's.
_CLAUSE_OPENERS = frozenset("that which who whom whose where when while because if".split())  # noqa: SIM905
_WH_WORDS = frozenset("which what whose whom who how".split())  # noqa: SIM905


def voice_swapped(passive: str, active: str) -> bool:
    """Whether the passive text gives the active one's roles the other way round: "Google was
    bought by YouTube" / "Google bought YouTube", "the dog was bitten by the man" / "the dog
    bit the man". The passive names its agent after "by" and its subject before the verb;
    the active text names the agent first. Refused only when the active text has the same verb
    ("bit" / "bitten"; "lost to" / "was defeated by" says the same with another) between a
    subject word and an agent word, and every subject word it holds once stands before every
    such agent word ("the suspect was arrested by police" / "police arrested the suspect"
    keeps the roles). "By" and a verb in "-ing" say how, not who ("configured by passing
    arguments")."""
    match = _PASSIVE.search(passive)
    if match is None:
        return False
    participle = match.group("participle").lower()
    before = _CLAUSE_END.split(passive[: match.start()])[-1]
    subject_tokens = tokens_of(before)
    cut = max((i + 1 for i, t in enumerate(subject_tokens) if t in _CLAUSE_OPENERS), default=0)
    subject = {t for t in subject_tokens[cut:] if _may_name_a_role(t)}
    clause_after = tokens_of(_CLAUSE_END.split(passive[match.end() :])[0])
    after = list(dropwhile(lambda t: t in _STOPWORDS, clause_after))
    agent = {t for t in takewhile(lambda t: t not in _STOPWORDS, after) if _may_name_a_role(t)}
    if after and after[0].endswith("ing"):
        return False
    tokens = tokens_of(active)
    verbs = [i for i, t in enumerate(tokens) if _same_verb(t, participle)]
    counts = Counter(tokens)
    place = {t: i for i, t in enumerate(tokens) if counts[t] == 1}
    # A question word fronts the object with its phrase: "which company did Google buy",
    # "which quality of men do women like".
    fronted: set[str] = set()
    for i, token in enumerate(tokens):
        if token in _WH_WORDS:
            phrase = takewhile(lambda t: t not in _STOPWORDS or t == "of", tokens[i + 1 :])
            fronted.update(phrase)
    pairs = [
        (place[s], place[a])
        for s in subject - agent - fronted
        for a in agent - subject
        if s in place and a in place
    ]
    return (
        bool(pairs)
        and all(s < a for s, a in pairs)
        and any(s < v < a for s, a in pairs for v in verbs)
    )


_NOT_ROLES = frozenset("never always often also already still just ever even only".split())  # noqa: SIM905


def _may_name_a_role(token: str) -> bool:
    """Whether ``token`` may be a subject's or an agent's word: no function word, pronoun or
    adverb ("I've", "never", "quickly")."""
    return not (
        token in _STOPWORDS
        or token in _NOT_ENTITIES
        or token in _NOT_ROLES
        or "'" in token
        or token.endswith("ly")
    )


def _same_verb(word: str, participle: str) -> bool:
    """Whether ``word`` is a form of the verb ``participle`` is ("bit", "bitten"; "arrests",
    "arrested"): one of them opens the other, or they share their first four letters."""
    shared = sum(
        1 for _ in takewhile(lambda pair: pair[0] == pair[1], zip(word, participle, strict=False))
    )
    return shared >= 3 and (shared == min(len(word), len(participle)) or shared >= 4)


_MAX_REORDERED = 40  # content words at most for the check below (it tries every block move)


def reordered(query: str, candidate: str) -> bool:
    """The same content words, in an order that one block moved elsewhere cannot give: "the
    wwe fights are scripted and fake" / "the fake fights are scripted and wwe", "German
    brewery of regional style" / "regional brewery of German style". Moving one block keeps
    the meaning ("in Python, how do I sort a list" / "how do I sort a list in Python", "A
    and B" / "B and A"); two words trading places across others changes who does what, unless
    the relation is the same both ways round."""
    q, c = content_words(query), content_words(candidate)
    if q == c or len(q) > _MAX_REORDERED or sorted(q) != sorted(c):
        return False
    if _exchanged_around_relation(q, c):
        return False  # "how is A different from B" is "how is B different from A"
    n = len(q)
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n + 1):
                if q[:i] + q[j:k] + q[i:j] + q[k:] == c:
                    return False
    return True


def framed_swap(query: str, candidate: str) -> bool:
    """The same words in the same frame of function words, two content words trading slots:
    "can depression be cured" / "can cured be depression", "why do Russians dislike Poles" /
    "why do Poles dislike Russians". One moved block (which :func:`reordered` allows) can do
    that when the sentence has two or three content words, but a rephrasing that moves a
    phrase moves its function words with it ("how are waves formed" / "how waves are
    formed"), so an unchanged frame means the roles changed. Words of one phrase rotated with
    no function word among them ("muscle building" / "building muscle", "quickly learn python"
    / "learn python quickly") and things joined by "and"/"or" ("SBI clerk or IBPS PO" / "IBPS
    PO or SBI clerk") keep the meaning, as do symmetric relations."""
    q, c = tokens_of(query), tokens_of(candidate)
    if q == c or len(q) != len(c) or len(q) > _MAX_REORDERED:
        return False
    if any((a in _STOPWORDS or b in _STOPWORDS) and a != b for a, b in zip(q, c, strict=True)):
        return False  # another frame
    if sorted(q) != sorted(c):
        return False
    differ = [i for i in range(len(q)) if q[i] != c[i]]
    if _time_and_place_exchanged(q, differ):
        return False  # "born in Sweden in 1947" / "born in 1947 in Sweden"
    run, moved = q[differ[0] : differ[-1] + 1], c[differ[0] : differ[-1] + 1]
    if not _STOPWORDS & set(run) and any(run[k:] + run[:k] == moved for k in range(len(run))):
        return False  # a phrase's words rotated: "quickly learn python" / "learn python quickly"
    return not _symmetric_exchange(query, candidate)  # "girls or the boys", "boys or the girls"


def _time_and_place_exchanged(q: tuple[str, ...], differ: Sequence[int]) -> bool:
    """Whether the two words that trade slots are a number and a word each after the same
    preposition of place or time: when and where something happened, said in either order
    ("in Sweden in 1947" / "in 1947 in Sweden"). A number and a name never trade roles."""
    if len(differ) != 2 or min(differ) == 0:
        return False
    first, second = differ
    return (
        q[first - 1] == q[second - 1]
        and q[first - 1] in _ADJUNCT_PREPOSITIONS
        and q[first][:1].isdigit() != q[second][:1].isdigit()
    )


def _symmetric_exchange(query: str, candidate: str) -> bool:
    """Whether the candidate is the query with the two things a symmetric relation joins
    exchanged, determiners aside ("the cat or a dog" / "the dog or a cat")."""
    return _exchanged_around_relation(
        [t for t in tokens_of(query) if t not in _DETERMINERS],
        [t for t in tokens_of(candidate) if t not in _DETERMINERS],
    )


_RELATION_WORDS = 3  # words at most between two things a symmetric relation joins
# The words of a symmetric relation that stand between the two things it joins: "A different
# from B", "A compared with B". "Between" stands before both ("between A and B": the "and"
# joins them); what trades places across it changes the question ("the values between the
# nutritional differences").
_RELATIONS = _SYMMETRIC - {"between"}


def _exchanged_around_relation(q: Sequence[str], c: Sequence[str]) -> bool:
    """Whether ``c`` is ``q`` with the two things a symmetric relation joins exchanged (each of
    one or more words): on either side of one "and"/"or" ("girls or boys"), or of a short
    stretch that starts or ends with a symmetric word ("A different from B", "A similar to
    B", "A compared with B"). A relation word that moves, or things exchanged across more than
    the relation, change the question: "the currencies between CNY and CNH difference", "do
    departments at Zillow have a good work-life balance? does this differ across positions and
    employees"."""
    q, c = tuple(q), tuple(c)
    n = len(q)
    if n != len(c):
        return False
    differ = [i for i in range(n) if q[i] != c[i]]
    if not differ:
        return False
    first, last = differ[0], differ[-1]
    for j in range(first + 1, last + 1):  # the relation is q[j:k]; X = q[i:j], Y = q[k:l]
        for k in range(j + 1, min(j + _RELATION_WORDS, last) + 1):
            between = q[j:k]
            if between[0] in _COORDINATORS:
                if len(between) != 1:
                    continue
            elif between[0] not in _RELATIONS and between[-1] not in _RELATIONS:
                continue
            for i in range(first + 1):
                for end in range(last + 1, n + 1):
                    if q[:i] + q[k:end] + between + q[i:j] + q[end:] == c:
                        return True
    return False


# What a rewording may change and still say the very same thing: the spelling of numbers
# ("ten" / "10", "12 percent" / "12%"), contractions, articles, titles before a name, "that"
# after "said", punctuation.
# Cardinals only: "a third of the students" is not "three of the students".
_SPELT_NUMBERS = {word: str(value) for word, value in _UNITS.items() if value < 20}
_SPELT_NUMBERS.pop("one")  # "one can", "the one"
_CONTRACTED = {
    "can't": ("can", "not"), "cannot": ("can", "not"), "won't": ("will", "not"),
    "shan't": ("shall", "not"), "ain't": ("is", "not"),
}  # fmt: skip
_CONTRACTED_ENDINGS = (
    ("n't", "not"), ("'re", "are"), ("'m", "am"), ("'ll", "will"), ("'ve", "have"),
)  # fmt: skip
# "'s" is "is" after these; after a name it is a possessive ("Apple's").
_IS_CONTRACTED = frozenset("it that what there here who where how when why".split())  # noqa: SIM905
_DROPPED = frozenset(["a", "an", "the", "mr", "mrs", "ms", "dr", "prof", "please"])
_PERCENT = frozenset(["percent", "pct", "%"])
# Words after which "that" only opens what was said: "officials said (that) the vote ...".
_REPORTING = frozenset(
    "said says say told reported reports announced announces added adds stated noted "  # noqa: SIM905
    "claimed claims argued explained confirmed".split()
)
# Words that open a clause or a phrase that moves whole to the front or the back of a
# sentence and keeps its sense there: "the meeting was postponed because the CEO was ill" /
# "because the CEO was ill, the meeting was postponed", "how do I sort a list in Python" /
# "in Python, how do I sort a list".
_MOVABLE_OPENERS = frozenset(
    "because if when whenever although though since after before while unless until once "  # noqa: SIM905
    "whereas in on at for during with from to by within under over about through across "
    "among inside outside near into according".split()
)
_COORDINATED_NOUN = frozenset(
    "a an the my your his her its our their this that these those some".split()  # noqa: SIM905
)
# Words (of any script), numbers with their decimal points, and every symbol but the marks
# that end or break a sentence: "C++" is not "C", "x-2y=3" keeps its signs, "mind-blowing" is
# "mind blowing".
_CANONICAL_TOKEN = re.compile(r"\w+(?:[.,]\d+)*(?:'\w+)?|-(?=\d)|[^\w\s.,;:!?\"'“”‘’()\-]|[()]")
_DOTTED_ACRONYM = re.compile(r"\b(?:[a-z]\.){2,}")
_MAX_REWORDED = 60  # tokens at most for the block-move checks below


@text_memo()
def _canonical_tokens(text: str) -> tuple[str, ...]:
    """The words of ``text`` as a rewording that keeps its sense may change them: numbers as
    digits, contractions spelt out; articles, titles and punctuation kept (see
    :func:`_bare`)."""
    lowered = _DOTTED_ACRONYM.sub(lambda m: m.group().replace(".", ""), text.casefold())
    lowered = lowered.replace("’", "'").replace("per cent", "percent")
    out: list[str] = []
    for token in _CANONICAL_TOKEN.findall(lowered):
        if token in _CONTRACTED:
            out.extend(_CONTRACTED[token])
            continue
        for ending, word in _CONTRACTED_ENDINGS:
            if token.endswith(ending) and len(token) > len(ending):
                out.extend((token[: -len(ending)], word))
                break
        else:
            if token.endswith("'s") and token[:-2] in _IS_CONTRACTED:
                out.extend((token[:-2], "is"))
            elif token in _PERCENT:
                out.append("%")
            elif token[0].isdigit():
                out.append(_canonical_number(token))
            elif token in _CURRENCY_WORDS and out and _amount_ends(out):
                # "1.2 billion dollars" is "$1.2 billion": the sign goes before the amount.
                start = len(out) - 1 - (out[-1] in _MAGNITUDES)
                out.insert(start, _CURRENCY_WORDS[token])
            else:
                out.append(_SPELT_NUMBERS.get(token, token))
    return tuple(out)


_CURRENCY_WORDS = {"dollar": "$", "dollars": "$", "usd": "$", "euro": "€", "euros": "€"}


def _amount_ends(tokens: Sequence[str]) -> bool:
    """Whether ``tokens`` end with an amount: a number, or a number and its magnitude."""
    last = tokens[-1] if tokens[-1] not in _MAGNITUDES else tokens[-2] if len(tokens) > 1 else ""
    return last[:1].isdigit()


def _bare(tokens: Sequence[str]) -> tuple[str, ...]:
    """``tokens`` without articles, titles, "please", or "that" after a reporting verb."""
    return tuple(
        t
        for i, t in enumerate(tokens)
        if t not in _DROPPED and not (t == "that" and i and tokens[i - 1] in _REPORTING)
    )


def reworded(query: str, candidate: str) -> bool:
    """Whether the two texts say the very same thing in other words, by construction: the same
    words once numbers, contractions, articles and titles are spelt alike ("he was sentenced
    to ten years" / "... to 10 years", "Dr. Smith said" / "Smith said"), or with one clause or
    phrase moved whole from the back to the front ("the vote is on Thursday, officials said" /
    "officials said that the vote is on Thursday", "the meeting was postponed because the CEO
    was ill" / "because the CEO was ill, the meeting was postponed"), a participle's phrase
    set off after the subject put first ("the museum, founded in 1901, is ..." / "founded in
    1901, the museum is ..."), or two noun phrases
    joined by "and"/"or" exchanged ("a man and a woman are dancing" / "a woman and a man
    ...").

    A yes here is meant for candidates the guards let through, which have already been
    checked for swapped roles, numbers and negations; it says the verifier's doubt is about
    wording alone."""
    q_full, c_full = _canonical_tokens(query), _canonical_tokens(candidate)
    q, c = _bare(q_full), _bare(c_full)
    if not q or q == c:
        return bool(q)
    if len(q) != len(c) or len(q) > _MAX_REWORDED or sorted(q) != sorted(c):
        return False
    return (
        _moved_to_other_end(q, c)
        or _nouns_exchanged(q_full, c_full)
        or _participle_moved_to_front(query, c)
        or _participle_moved_to_front(candidate, q)
    )


def _moved_to_other_end(q: tuple[str, ...], c: tuple[str, ...]) -> bool:
    """Whether ``c`` is ``q`` cut in two and put back the other way round, where one of the
    two parts is a clause or phrase that moves whole: it opens with a subordinating word or a
    preposition, or is who said it ("officials said"); or one of them is the other with a
    phrase of place or time taken from within and put first ("the court agreed on Monday to
    hear the case" / "on Monday, the court agreed to hear the case")."""
    n = len(q)
    for i in range(2, n - 1):
        head, tail = q[:i], q[i:]
        if tail + head == c and (
            head[0] in _MOVABLE_OPENERS
            or tail[0] in _MOVABLE_OPENERS
            or head[-1] in _REPORTING
            or tail[-1] in _REPORTING
        ):
            return True
    return _phrase_moved_to_front(q, c) or _phrase_moved_to_front(c, q)


def _phrase_moved_to_front(q: tuple[str, ...], c: tuple[str, ...]) -> bool:
    """Whether ``c`` is ``q`` with a phrase of place or time of two to five words (see
    :data:`_FRONTED_OPENERS`) taken from between its first and last words and put first.
    (Put last, it may only have traded places with the phrase that ended the sentence: "in
    India in June" / "in June in India" is fine, "in Maharashtra in India" / "in India in
    Maharashtra" is not.)"""
    n = len(q)
    for i in range(1, n - 2):
        if q[i] not in _FRONTED_OPENERS or _ADJUNCT_PREPOSITIONS & set(q[max(0, i - 3) : i]):
            continue  # one of stacked phrases ("in The Catcher in the Rye") is no phrase alone
        for j in range(i + 2, min(i + _MOVED_PHRASE, n - 1) + 1):
            phrase, rest = q[i:j], q[:i] + q[j:]
            if c == phrase + rest:
                return True
    return False


_MOVED_PHRASE = 5  # words at most in a phrase moved from within to the front
# Past participles that do not end in "-ed", for :func:`_participle_moved_to_front`.
_IRREGULAR_PARTICIPLES = frozenset(
    "born built written known made held led run won given taken seen chosen drawn grown "  # noqa: SIM905
    "shown sold told found left kept set put brought bought taught thought caught begun "
    "done gone sent spent lost paid laid hit hurt cut shut struck stolen broken spoken "
    "driven ridden hidden forgotten frozen sung sunk swum thrown worn torn sworn beaten "
    "bitten eaten fallen shaken awoken woven".split()
)
_SUBJECT_OPENERS = frozenset(
    "the a an this that these those my your his her its our their".split()  # noqa: SIM905
)
_SUBJECT_WORDS = 3  # words at most before a participle's phrase set off after the subject


def _participle_moved_to_front(text: str, other: tuple[str, ...]) -> bool:
    """Whether ``other`` (bare canonical tokens) is ``text`` with the participle's phrase set
    off by commas right after its subject put first: "The museum, founded in 1901, is the
    oldest" / "Founded in 1901, the museum is the oldest". The subject is at most three words
    that open with a determiner or are capitalised (a name), so the phrase says something of
    the subject in both places; after a verb it could say something of the object ("she met
    the man, injured in the crash, ..." / "injured in the crash, she met the man ...")."""
    parts = text.split(",")
    if len(parts) < 3:
        return False
    subject, phrase = parts[0].split(), _bare(_canonical_tokens(parts[1]))
    if not subject or len(subject) > _SUBJECT_WORDS or not phrase:
        return False
    if subject[0].casefold() not in _SUBJECT_OPENERS and not all(w[:1].isupper() for w in subject):
        return False
    opener = phrase[0]
    if not (opener.endswith("ed") and len(opener) > 4) and opener not in _IRREGULAR_PARTICIPLES:
        return False
    head = _bare(_canonical_tokens(parts[0]))
    rest = _bare(_canonical_tokens(",".join(parts[2:])))
    return other == phrase + head + rest


def _nouns_exchanged(q: tuple[str, ...], c: tuple[str, ...]) -> bool:
    """Whether ``c`` is ``q`` with two noun phrases joined by "and"/"or" exchanged, each
    opening with a determiner: "a man and a woman" / "a woman and a man"."""
    if len(q) != len(c):
        return False
    differ = [i for i in range(len(q)) if q[i] != c[i]]
    if not differ:
        return False
    first, last = differ[0], differ[-1] + 1
    if first and q[first - 1] in _COORDINATED_NOUN:
        first -= 1  # the same determiner opens both: "a man and a woman"
    span_q, span_c = q[first:last], c[first:last]
    for j, word in enumerate(span_q):
        if word not in ("and", "or") or j == 0 or j == len(span_q) - 1:
            continue
        x, y = span_q[:j], span_q[j + 1 :]
        if (
            len(x) <= _COORDINATED_GAP + 1
            and len(y) <= _COORDINATED_GAP + 1
            and x[0] in _COORDINATED_NOUN
            and y[0] in _COORDINATED_NOUN
            and (*y, word, *x) == span_c
        ):
            return True
    return False


_SAME_WORDS = 0.7  # share of content words two texts must have in common for order to count


def _squeezed(text: str) -> str:
    """Lower case, without spaces or quote marks: "Hugging Face.js" is "huggingface.js"."""
    return re.sub(r"[\s\"'`“”‘’]+", "", text.lower())


def _quotes_differ(quoted: frozenset[str], other: str) -> bool:
    """Whether a quoted string of one text is absent from the other (quoted there or not),
    unless it is a sentence someone said that the other reports in its own words."""
    squeezed = _squeezed(other)
    return any(_squeezed(q) not in squeezed and not _reported(q, other) for q in quoted)


_REPORTED_WORDS = 4  # words at least of a quoted sentence that may be reported in other words
_PLAIN_SENTENCE = re.compile(r"[A-Za-z'’ ,.!?-]+")


def _reported(quote: str, other: str) -> bool:
    """Whether ``quote`` is a sentence of plain words whose content words ``other`` has in the
    same order: what someone said, reported in other words ('"We are very pleased with the
    results," the chief executive said' / 'the chief executive said they were very pleased
    with the results'). A name, a command or a code string quoted (no plain sentence) must
    stand in the other text as it is."""
    if len(tokens_of(quote)) < _REPORTED_WORDS or not _PLAIN_SENTENCE.fullmatch(quote):
        return False
    said = content_words(quote)
    if not said:
        return False
    remaining = iter(content_words(other))
    return all(word in remaining for word in said)  # a subsequence: in order


# Months and days are names that news writes short, by their first three or four letters:
# "Oct. 5" is "October 5", "Sept." September, "Tues." Tuesday.
_MONTHS = frozenset(
    "january february march april may june july august september october november december".split()  # noqa: SIM905
)
_MONTHS_AND_DAYS = (_MONTHS - {"may"}) | frozenset(
    "monday tuesday wednesday thursday friday saturday sunday".split()  # noqa: SIM905
)


def _names_missing(text: TextFeatures, other: str) -> bool:
    """Whether a name in ``text`` is absent from ``other``: as a word, written together or
    apart ("HuggingFace" / "Hugging Face"), spelt out ("ML" / "Machine Learning"), in the
    plural ("Sundays" / "Sunday", "iPhones" / "iPhone"), or, for a month or a day, written
    short ("Oct." / "October")."""
    words = features(other).words
    squeezed = _squeezed(other)
    initials = "".join(_initials(other))
    abbreviated = _abbreviations(text)
    return any(
        name not in words
        and name.replace("'", "") not in squeezed
        and not (2 <= len(name) <= 6 and name.isalpha() and name in initials)
        and not (abbreviated.get(name, set()) & words)
        and not (name in _MONTHS_AND_DAYS and {name[:3], name[:4]} & words)
        and not (len(name) > 4 and _singular(name) in words)
        for name in text.entities
    )


def _singular(word: str) -> str:
    """``word`` without the ending of an English plural ("Sundays", "iPhones", "Churches"),
    or as it is."""
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _abbreviations(text: TextFeatures) -> dict[str, set[str]]:
    """For each name, the acronyms it is part of: the initials of the run of consecutive names
    it stands in ("Machine Learning": ml; "JavaScript": js), so that "ML" in the other text
    accounts for it."""
    found: dict[str, set[str]] = {}
    for run in _name_runs(text.names):
        names = [name for name, _ in run]
        for start in range(len(names)):
            for end in range(start + 1, len(names) + 1):
                acronym = "".join(_initials(" ".join(names[start:end])))
                if len(acronym) >= 2:
                    for member in names[start:end]:
                        found.setdefault(member.lower(), set()).add(acronym)
    return found


def _name_runs(names: tuple[tuple[str, int], ...]) -> list[list[tuple[str, int]]]:
    """The names written next to each other, as runs: "Google Cloud Storage" is one."""
    runs: list[list[tuple[str, int]]] = []
    for name, position in names:
        if runs and runs[-1][-1][1] == position - 1:
            runs[-1].append((name, position))
        else:
            runs.append([(name, position)])
    return runs


def _initials(text: str) -> list[str]:
    """First letters of the words, camelCase parts counted as words ("TypeScript": t, s)."""
    parts = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", text)
    return [p[0].lower() for p in parts]


def _names_swapped(q: TextFeatures, c: TextFeatures) -> bool:
    """Whether the texts name the same things in another order: the same names as often in
    another sequence, or else two names that each text orders strictly (every occurrence of one
    before every occurrence of the other) ordered the other way round."""
    sequence_q = [_word_key(name) for name, _ in q.names]
    sequence_c = [_word_key(name) for name, _ in c.names]
    if sorted(sequence_q) == sorted(sequence_c):
        return sequence_q != sequence_c  # the same names, as often, in another order
    spans_q, spans_c = _spans(q.names), _spans(c.names)
    shared = [n for n in spans_q if n in spans_c]
    for i, x in enumerate(shared):
        for y in shared[i + 1 :]:
            before_q = spans_q[x][1] < spans_q[y][0]
            after_q = spans_q[y][1] < spans_q[x][0]
            before_c = spans_c[x][1] < spans_c[y][0]
            after_c = spans_c[y][1] < spans_c[x][0]
            if (before_q and after_c) or (after_q and before_c):
                return True
    return False


# Prepositions that open a phrase of place or time, which moves freely and names nobody's
# role: "Apple unveiled the iPhone on Wednesday in San Francisco" / "On Wednesday in San
# Francisco, Apple unveiled the iPhone".
_ADJUNCT_PREPOSITIONS = frozenset(
    "in on at during near inside outside throughout within since until".split()  # noqa: SIM905
)
# What opens a phrase that may be put first (:func:`_phrase_moved_to_front`): a preposition of
# place or time, or "after"/"before" with what happened first ("she returned to Paris after the
# war" / "after the war, she returned to Paris").
_FRONTED_OPENERS = _ADJUNCT_PREPOSITIONS | {"after", "before"}


def _role_names(
    query: str, q: TextFeatures, candidate: str, c: TextFeatures
) -> tuple[TextFeatures, TextFeatures]:
    """``q`` and ``c`` with only the names whose order can say who does what to whom: without
    those that stand in a phrase of place or time found in both texts, with the same
    preposition ("in San Francisco"), and without the one day or month both texts name
    ("died Sunday at his home in Los Angeles" / "died at his Los Angeles home on Sunday").
    Such a phrase or date says the same thing wherever it stands, so only the other names'
    order tells a swap ("did Obama meet Putin in Moscow" / "did Putin meet Obama in Moscow").
    A name after the preposition in one text only, or more often in one, still counts ("is
    Paris in France" / "is France in Paris"), as do two days ("from Monday to Friday")."""
    found_q, found_c = _adjuncts(query, q), _adjuncts(candidate, c)
    count_q, count_c = Counter(found_q.values()), Counter(found_c.values())
    shared = {phrase for phrase, n in count_q.items() if count_c[phrase] == n}
    dates_q, dates_c = _lone_dates(query, q), _lone_dates(candidate, c)
    same_date = len(set(dates_q.values())) == 1 and set(dates_q.values()) == set(dates_c.values())
    if not shared and not same_date:
        return q, c

    def kept(
        features: TextFeatures,
        found: dict[int, tuple[str, tuple[str, ...]]],
        dates: dict[int, str],
    ) -> TextFeatures:
        dropped = {
            p
            for start, phrase in found.items()
            if phrase in shared
            for p in range(start, start + len(phrase[1]))
        }
        if same_date:
            dropped |= dates.keys()
        names = tuple((name, p) for name, p in features.names if p not in dropped)
        return dataclasses.replace(features, names=names)

    return kept(q, found_q, dates_q), kept(c, found_c, dates_c)


def _lone_dates(text: str, features: TextFeatures) -> dict[int, str]:
    """The days and months named on their own, by word position: no other name and no number
    beside them ("on Sunday", not "Black Friday" or "September 27")."""
    tokens = [m.group() for m in _words_read(text)]
    named = {position for _, position in features.names}
    return {
        position: _word_key(name)
        for name, position in features.names
        if _word_key(name) in _MONTHS_AND_DAYS
        and not {position - 1, position + 1} & named
        and not any(
            0 <= near < len(tokens) and tokens[near][:1].isdigit()
            for near in (position - 1, position + 1)
        )
    }


def _adjuncts(text: str, features: TextFeatures) -> dict[int, tuple[str, tuple[str, ...]]]:
    """The names written together (nothing but spaces between them) right after a preposition
    of place or time, by the first name's word position: (the preposition, the names)."""
    matches = _words_read(text)
    named = {position for _, position in features.names}
    found = {}
    for first in sorted(named):
        preposition = _word_key(matches[first - 1].group()) if first else ""
        if preposition not in _ADJUNCT_PREPOSITIONS:
            continue
        last = first
        while (
            last + 1 in named
            and not matches[last].string[matches[last].end() : matches[last + 1].start()].strip()
        ):
            last += 1
        found[first] = (
            preposition,
            tuple(_word_key(matches[p].group()) for p in range(first, last + 1)),
        )
    return found


def _names_kept_their_neighbours(
    query: str, q: TextFeatures, candidate: str, c: TextFeatures
) -> bool:
    """Whether every name stands beside a word it stood beside in the other text: names that
    moved with the clause they stand in ("you can create a FileSystem for Google Cloud Storage
    by running gcsfs.GCSFileSystem()" / "by running gcsfs.GCSFileSystem(), you can create a
    FileSystem for Google Cloud Storage"), not into each other's places ("why did Google buy
    YouTube" / "why did YouTube buy Google", where each name takes the other's neighbours).

    A run of names written together ("Google Cloud Storage") counts as one, and must keep its
    words' order; its neighbours are the nearest words on either side that are not function
    words, and only those no other run of the text has count. Every occurrence must keep one.
    Only for texts whose every capitalised word is a name: in Title Case the positions of
    capitalised words say nothing of what moved."""
    if not q.names or not c.names:
        return False
    if {_word_key(w) for w, _ in (*q.names, *c.names)} - {*q.entities, *c.entities}:
        return False
    runs_q, runs_c = _neighbours(query, q), _neighbours(candidate, c)
    if sorted(run for run, _ in runs_q) != sorted(run for run, _ in runs_c):
        return False  # a name's own words in another order: "Hillary Clinton" / "Clinton Hillary"
    return _each_kept(runs_q, runs_c) and _each_kept(runs_c, runs_q)


_Neighbours = list[tuple[tuple[str, ...], set[str]]]  # per occurrence of a run of names


def _neighbours(text: str, features: TextFeatures) -> _Neighbours:
    """Each occurrence of a run of names, with its neighbouring words as ``"<word"`` (before
    it) and ``"word>"`` (after): the nearest on each side that is no function word."""
    tokens = [_word_key(m.group()) for m in _words_read(text)]
    found: _Neighbours = []
    for run in _name_runs(features.names):
        first, last = run[0][1], run[-1][1]
        near = set()
        for i, step, shown in ((first - 1, -1, "<{}"), (last + 1, 1, "{}>")):
            while 0 <= i < len(tokens) and tokens[i] in _STOPWORDS:
                i += step
            near.add(shown.format(tokens[i] if 0 <= i < len(tokens) else ""))
        found.append((tuple(_word_key(name) for name, _ in run), near))
    return found


def _each_kept(ours: _Neighbours, theirs: _Neighbours) -> bool:
    """Whether each occurrence in ``ours`` has a neighbour that the same run has somewhere in
    ``theirs``, counting only neighbours no other run has (two names after "the climate of"
    and "the climate in" trade places without either losing "climate")."""

    def distinct(found: _Neighbours) -> dict[tuple[str, ...], set[str]]:
        owners: dict[str, set[tuple[str, ...]]] = {}
        for run, near in found:
            for word in near:
                owners.setdefault(word, set()).add(run)
        kept: dict[tuple[str, ...], set[str]] = {}
        for run, near in found:
            kept.setdefault(run, set()).update(w for w in near if len(owners[w]) == 1)
        return kept

    theirs_kept = distinct(theirs)
    ours_kept = distinct(ours)
    return all(near & ours_kept[run] & theirs_kept.get(run, set()) for run, near in ours)


def _spans(names: tuple[tuple[str, int], ...]) -> dict[str, tuple[int, int]]:
    spans: dict[str, tuple[int, int]] = {}
    for written, position in names:
        name = _word_key(written)
        first, last = spans.get(name, (position, position))
        spans[name] = (min(first, position), max(last, position))
    return spans


def _overlap(a: str, b: str) -> float:
    """Jaccard overlap of the two texts' content words."""
    wa = {_word_key(w) for w in content_words(a)}
    wb = {_word_key(w) for w in content_words(b)}
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


MAX_UNBROKEN_RUN = 100  # characters without a space: hashes, keys, base64, minified code
MIN_KNOWN_WORDS = 2  # "yes" and "no" are close in embedding space and opposite in meaning
_UNBROKEN = re.compile(rf"\S{{{MAX_UNBROKEN_RUN + 1},}}")


def illegible(reading: Reading) -> bool:
    """Whether the embedding model sees too little of a prompt for its vector to stand for
    it, so that only an exact match may answer it: fewer than ``MIN_KNOWN_WORDS`` words it
    knows (emoji only, one word), or more unknown tokens than known words (a script it was not
    trained on)."""
    return reading.known_words < MIN_KNOWN_WORDS or reading.unknown > reading.known_words


# Two prompts are in a language the model does not read when at least this share of their
# words of 3+ letters are ones its vocabulary holds only in pieces. English prompts rarely
# reach it (3 of the 1,705 hits on QQP's test split did, each short and full of rare words:
# "how can I visualize a tesseract?"); French, German or Dutch ones usually do.
UNREAD_SHARE = 0.5
# Two forms of one word: the same stem of 4+ letters and endings of at most 3 ("cancelo" /
# "cancelar", "ändere" / "ändern"), not two words of one prefix ("Wochentag" / "Wochenende").
_STEM, _ENDING = 4, 3


def unread_difference(query: str, cached: str, pieced: frozenset[str]) -> bool:
    """Whether two prompts are in a language the model does not read (see
    :data:`UNREAD_SHARE`; ``pieced`` holds both readings' :attr:`Reading.pieced`) and differ
    in more than the form of their words: accents, case, punctuation, endings.

    The model sees such words as bags of pieces, so neither the cosine nor the verifier can
    weigh what differs: "Je voudrais augmenter / réduire ma limite de retrait" are 0.92 alike
    and verified at 0.72, "Ich möchte meine Bestellung (nicht) stornieren" 0.97 and 0.75, "...
    avant / après le repas" 0.98 and 0.78. The guards know English only. So in such a language
    a word changed, added or moved is a different question."""
    query_words = [folded(w) for w in LETTER_RUN.findall(query)]
    cached_words = [folded(w) for w in LETTER_RUN.findall(cached)]
    longer = {w for w in (*query_words, *cached_words) if len(w) >= 3}
    if not longer or len(longer & pieced) < UNREAD_SHARE * len(longer):
        return False
    return len(query_words) != len(cached_words) or not all(
        a == b or _forms_of_one_word(a, b) for a, b in zip(query_words, cached_words, strict=True)
    )


def _forms_of_one_word(a: str, b: str) -> bool:
    shorter = min(len(a), len(b))
    stem = next((i for i in range(shorter) if a[i] != b[i]), shorter)
    return stem >= _STEM and len(a) - stem <= _ENDING and len(b) - stem <= _ENDING


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
