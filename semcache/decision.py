"""Which stored entry, if any, answers a lookup.

After the index has found the nearest vectors of a scope, a candidate must reach the
similarity floor, carry the same text the model cannot see (:mod:`semcache.vectors`), pass the
lexical guards (:mod:`semcache.policy`), and, with a verifier, be judged likely enough to be
right (:mod:`semcache.verification`). The verifier is a gate on the nearest survivors, asked
once for every lookup of a batch. This part decides; the cache serves (and records the hit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semcache.config import DEFAULT_MIN_SIMILARITY, CacheConfig
from semcache.embedding import Reading
from semcache.entries import Entry
from semcache.error_bound import ErrorBound
from semcache.index import SCORE_ERROR
from semcache.keys import CacheRequest
from semcache.policy import Reason, guard_mismatch, reworded, same_content, unread_difference
from semcache.vectors import Vectors
from semcache.verification import Verifier


@dataclass(frozen=True, kw_only=True)
class Hit:
    """A stored answer served for a lookup."""

    entry_id: int
    prompt: str  # the stored prompt that matched, not the query
    response: Any
    score: float  # cosine similarity to the query; 1.0 for an exact match
    reason: Reason
    namespace: str
    created_at: float
    expires_at: float | None
    confidence: float | None = None  # the verifier's probability; None when none ran


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The outcome of a lookup, hit or miss, with the evidence for it.

    ``score`` and ``entry_id`` describe the best candidate examined, also on a miss (``None``
    when no candidate was examined); ``confidence`` is the verifier's probability for it.
    """

    hit: Hit | None
    reason: Reason
    score: float | None = None
    entry_id: int | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class Screened:
    """Candidates of one lookup that passed the floor and the guards, best first, and the
    decision to return if none is served."""

    candidates: list[tuple[Entry, float]]
    miss: Decision


@dataclass(frozen=True)
class Choice:
    """The candidate a lookup is to be answered with."""

    entry: Entry
    score: float
    confidence: float | None  # the verifier's probability; None when none ran


# The probability a candidate that only rewords the query (:func:`semcache.policy.reworded`)
# is given at least: of the 591 rows of QQP that reword each other and pass the guards, 576 are
# labelled duplicates and the other 15 ask the same question too ("who's this girl?" / "who is
# this girl?").
REWORDED_CONFIDENCE = 0.99


class HitDecider:
    def __init__(
        self,
        config: CacheConfig,
        verifier: Verifier | None,
        vectors: Vectors,
        error_bound: ErrorBound | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.vectors = vectors
        self.error_bound = error_bound

    def bound_score(self, score: float | None, confidence: float | None) -> float | None:
        """The score :class:`~semcache.error_bound.ErrorBound` judges a candidate by (from a
        decision's ``score`` and ``confidence``): the verifier's probability with a verifier,
        else the cosine; ``None`` when no candidate reached that stage."""
        return confidence if self.verifier is not None else score

    @property
    def min_similarity(self) -> float:
        """The similarity floor in force: the configured one, else the verifier's, else
        ``DEFAULT_MIN_SIMILARITY``."""
        if self.config.min_similarity is not None:
            return self.config.min_similarity
        if self.verifier is not None:
            return self.verifier.min_similarity
        return DEFAULT_MIN_SIMILARITY

    @property
    def min_confidence(self) -> float | None:
        """The probability the verifier must give in force; ``None`` without a verifier."""
        if self.verifier is None:
            return None
        if self.config.min_confidence is not None:
            return self.config.min_confidence
        return self.verifier.min_confidence

    def screen(
        self,
        request: CacheRequest,
        reading: Reading,
        vector: NDArray[np.float32],
        scores: NDArray[np.float32],
        ids: NDArray[np.int64],
        fetch: Callable[[int], Entry | None],
    ) -> Screened:
        """The candidates among the nearest (``scores``, ``ids``, best first) that pass the
        floor, the opaque-text check and the guards; ``fetch`` gives a live entry or None.

        The index's scores may be rounded (:data:`semcache.index.SCORE_ERROR`): they only
        say which entries to examine. A candidate is judged by the cosine of ``vector`` (the
        query's) with its stored vector."""
        threshold = request.min_similarity or self.min_similarity
        wanted = 1 if self.verifier is None else self.config.verify_top
        candidates: list[tuple[Entry, float]] = []
        refused: list[_Refused] = []  # candidates refused as the query's swapped question
        reason, best_score, best_id = Reason.NO_CANDIDATE, None, None
        for indexed, entry_id in zip(scores.tolist(), ids.tolist(), strict=True):
            if entry_id < 0:
                break
            # Past the candidates wanted, the rest above the floor are read only for a question
            # the query swaps or negates word for word: it may rank below its own paraphrase.
            wanted_all = len(candidates) >= wanted
            if best_score is None:
                best_score, best_id = indexed, entry_id
            if indexed < threshold - SCORE_ERROR:
                if reason is Reason.NO_CANDIDATE:
                    reason = Reason.BELOW_THRESHOLD
                break
            entry = fetch(entry_id)
            if entry is None or entry.scope != request.scope.key:
                continue
            score = indexed if entry.vector is None else float(np.dot(entry.vector, vector))
            if entry_id == best_id:
                best_score = score
            if score < threshold:
                if reason is Reason.NO_CANDIDATE:
                    reason = Reason.BELOW_THRESHOLD
                continue
            # Text the model cannot see must be the same in both, and words it reads only in
            # pieces the same words, guards on or off: nothing else tells "is this key valid:
            # <key A>" from "... <key B>", or "augmenter" from "réduire". The words are checked
            # after the guards, so that a swap the guards see still takes its paraphrases along.
            stored = self.vectors.stored_reading(entry.prompt)
            mismatch = Reason.OPAQUE_MISMATCH if reading.opaque != stored.opaque else None
            if mismatch is None and self.config.guards:
                mismatch = guard_mismatch(request.prompt, entry.prompt)
            if mismatch is None and unread_difference(
                request.prompt, entry.prompt, reading.pieced | stored.pieced
            ):
                mismatch = Reason.UNREAD_MISMATCH
            if mismatch is not None:
                if not wanted_all and reason in (Reason.NO_CANDIDATE, Reason.BELOW_THRESHOLD):
                    reason, best_score, best_id = mismatch, score, entry_id
                swap = _refused_swap(request.prompt, entry, score, mismatch)
                if swap is not None and (swap.word_for_word or not wanted_all):
                    refused.append(swap)
                continue
            if not wanted_all:
                candidates.append((entry, score))
        if refused and candidates:
            candidates = _untainted(candidates, refused)
            if not candidates and reason in (Reason.NO_CANDIDATE, Reason.BELOW_THRESHOLD):
                first = refused[0]  # the miss is the swap's
                reason, best_score, best_id = first.reason, first.score, first.entry_id
        candidates.sort(key=lambda candidate: -candidate[1])  # stable: index order on ties
        miss = Decision(hit=None, reason=reason, score=best_score, entry_id=best_id)
        return Screened(candidates, miss)

    def choose(
        self,
        requests: Sequence[CacheRequest],
        screened: Mapping[int, Screened],
        vectors: Mapping[int, NDArray[np.float32]],
    ) -> dict[int, Choice | Decision]:
        """Per lookup (by position in ``requests``), the candidate to serve or the miss; one
        verifier call for the candidates of every lookup of a batch."""
        if self.verifier is None:
            return {
                i: self._bounded(requests[i], *s.candidates[0]) if s.candidates else s.miss
                for i, s in screened.items()
            }
        pairs = [(i, entry, score) for i, s in screened.items() for entry, score in s.candidates]
        outcomes: dict[int, Choice | Decision] = {
            i: s.miss for i, s in screened.items() if not s.candidates
        }
        if not pairs:
            return outcomes
        probabilities = self.verifier.probabilities(
            [requests[i].prompt for i, _, _ in pairs],
            [entry.prompt for _, entry, _ in pairs],
            np.stack([vectors[i] for i, _, _ in pairs]),
            np.stack([_vector(entry) for _, entry, _ in pairs]),
        )
        best: dict[int, tuple[float, Entry, float]] = {}
        for (i, entry, score), probability in zip(pairs, probabilities.tolist(), strict=True):
            if reworded(requests[i].prompt, entry.prompt):
                # The same words, spelt or ordered otherwise: the network's doubt is about
                # wording ("ten years" / "10 years", a clause moved to the front), and the
                # guards have checked what wording can hide.
                probability = max(probability, REWORDED_CONFIDENCE)
            if i not in best or probability > best[i][0]:
                best[i] = (probability, entry, score)
        for i, (probability, entry, score) in best.items():
            bound = self.error_bound
            # A request's own min_confidence holds; else the bound, when set, stands in for
            # the verifier's operating point.
            wanted = requests[i].min_confidence
            if wanted is None:
                wanted = 0.0 if bound is not None else self.min_confidence or 0.0
            reason: Reason | None = None
            if bound is not None and not bound.allows(requests[i].namespace, probability):
                reason = Reason.ERROR_BOUND
            elif probability < wanted:
                reason = Reason.UNVERIFIED
            if reason is None:
                outcomes[i] = Choice(entry, score, probability)
            else:
                outcomes[i] = Decision(
                    hit=None,
                    reason=reason,
                    score=min(1.0, score),
                    entry_id=entry.entry_id,
                    confidence=probability,
                )
        return outcomes

    def _bounded(self, request: CacheRequest, entry: Entry, score: float) -> Choice | Decision:
        """Without a verifier: the nearest candidate, unless the error bound refuses its
        cosine."""
        if self.error_bound is None or self.error_bound.allows(request.namespace, score):
            return Choice(entry, score, None)
        return Decision(
            hit=None, reason=Reason.ERROR_BOUND, score=min(1.0, score), entry_id=entry.entry_id
        )


# Refusals that say the query is the candidate's question with roles exchanged: its paraphrases
# ask the same exchanged question. A negation or an amount is worded in many ways, so a
# candidate nearer a question refused for those may still agree with the query (on BANKING77's
# test stream, refusing such candidates too lost 28 right hits for 1 wrong one), unless the
# refused question has the query's very words: then the query is it negated.
_SWAPS = frozenset({Reason.ORDER_MISMATCH, Reason.ENTITY_MISMATCH})


@dataclass(frozen=True)
class _Refused:
    """A candidate refused as the query's question with roles exchanged, or negated."""

    vector: NDArray[np.float32]
    word_for_word: bool  # the query's very content words: only their order or sense differs
    reason: Reason
    score: float  # its cosine to the query
    entry_id: int

    @property
    def margin(self) -> float:
        """How much nearer the query than this one a candidate must be to be served."""
        if self.word_for_word and self.reason in _SWAPS:
            return max(0.0, 1.0 - self.score)
        return 0.0


def _refused_swap(query: str, entry: Entry, score: float, mismatch: Reason) -> _Refused | None:
    """The refusal of ``entry`` (at cosine ``score`` to the query) as the query's question with
    roles exchanged or negated, if it is one.

    When the query has the refused question's very words in another order, the model barely
    tells the two apart (their cosine is ``score``), so neither does a paraphrase's cosine to
    each: a candidate nearer the query by less than the two are apart (1 - ``score``) may as
    well paraphrase the refused one. Not so for a negation of the query's words: "why can't I
    activate my card?" is a question of its own, and the query's paraphrases ("how do I
    activate my card?") sit nearer the query, as they should (on BANKING77's test stream the
    margin there cost 10 right hits and saved no wrong one)."""
    if entry.vector is None:
        return None
    word_for_word = same_content(query, entry.prompt)
    if mismatch not in _SWAPS and not (mismatch is Reason.NEGATION_MISMATCH and word_for_word):
        return None
    return _Refused(entry.vector, word_for_word, mismatch, score, entry.entry_id)


def _untainted(
    candidates: list[tuple[Entry, float]], refused: list[_Refused]
) -> list[tuple[Entry, float]]:
    """The candidates that are nearer the query than any candidate refused as a swap.

    A query a guard tells apart from a stored question ("how do I password a lost Gmail
    recover?" / "how do I recover a lost Gmail password?") is usually just as far from that
    question's paraphrases, but the paraphrase's other wording can hide from the guard what it
    saw ("how do you recover your Gmail account password?"). A candidate nearer the refused
    question than the query (by the refusal's margin) asks what the refused one asks."""
    stacked = np.stack([r.vector for r in refused])
    margins = np.array([r.margin for r in refused], dtype=np.float32)
    return [
        (entry, score)
        for entry, score in candidates
        if entry.vector is None or not bool(np.any(stacked @ entry.vector >= score - margins))
    ]


def _vector(entry: Entry) -> NDArray[np.float32]:
    assert entry.vector is not None  # only entries with a vector are in an index
    return entry.vector


__all__ = ["Choice", "Decision", "Hit", "HitDecider", "Screened"]
