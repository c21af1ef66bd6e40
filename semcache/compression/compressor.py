"""The compressor: a long chat history made shorter before it is sent, in one of three modes.

``window``
    The oldest closed blocks are dropped until the history fits ``budget_tokens``.
``extractive``
    Each plain-text message of the body is cut to its most salient units (a pure function of
    the message: the same cut every turn). Local: no upstream call.
``summary``
    Each closed block is replaced by a summary that a cheaper model writes once per block. A
    block whose summary cannot be had (the call fails or times out) is cut as in
    ``extractive`` instead, and the request goes on.

In every mode the head (system prompt), the tail (the last ``keep_turns`` turns) and every
message that is not plain text (tool calls and results, images) are sent byte for byte; a
history that is still over ``budget_tokens`` loses its oldest closed blocks, two or more at a
time so that the prefix changes seldom; a note marks where they were.

In every mode, the units left out (cut, summarised or dropped) that the last user message
refers to are *recalled*: quoted, in their order and with who said them, in a note just before
the last turns (its rare tokens, its content words and the cosine of the embedding model pick
them). Only that note depends on the question, and it comes after everything that does not,
so consecutive requests keep sharing their prefix.

Embedding units costs time (about 7 ms each on two cores), so units are embedded once and
remembered; :meth:`Compressor.warm` embeds a conversation's units off the request path, and
``embed_limit`` bounds how many a request embeds itself (those without a vector are recalled
by their words alone).
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semcache.compression.history import (
    Block,
    History,
    Slot,
    compressible_texts,
    count_history,
    message_tokens,
    starts_turn,
    with_texts,
)
from semcache.compression.summaries import Summaries, Summarise, fingerprint, summary_text
from semcache.compression.texts import (
    ELISION,
    cues_of,
    digest,
    kept_units,
    lexical_match,
    render,
    tokens_in,
    units_of,
)
from semcache.embedding import Embedder


class Mode(enum.StrEnum):
    OFF = "off"
    WINDOW = "window"
    EXTRACTIVE = "extractive"
    SUMMARY = "summary"


@dataclass(frozen=True)
class CompressionSettings:
    min_tokens: int = 1024  # histories up to this many tokens are sent as they are
    budget_tokens: int = 4096  # what a history is cut down to, at most
    keep_turns: int = 2  # the last turns, sent verbatim (the current user message is one)
    block_tokens: int = 768  # blocks close at the first turn start after this many tokens
    recall_tokens: int = 256  # the most tokens of units recall puts back
    summary_model: str = "gpt-4o-mini"
    summary_max_tokens: int = 300
    summary_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        for name in ("min_tokens", "budget_tokens", "block_tokens", "summary_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.keep_turns < 1:
            raise ValueError("keep_turns must be at least 1 (the current user message)")
        if self.recall_tokens < 0:
            raise ValueError("recall_tokens must not be negative")
        if not 0 < self.summary_timeout_s < float("inf"):
            raise ValueError("summary_timeout_s must be a positive number of seconds")


# Recall puts a unit back when its words and its cosine to the question add up to this. A
# question that says it points back ("again", "did I say", "what's my …?") also gets its best
# few matches down to a floor: it asks for something earlier, and these are the likeliest.
# Tuned on planted facts with the questions of the training templates (benchmarks/
# compression_bench.py --split train); an unrelated question scores under 0.5 nearly always.
RECALL_THRESHOLD = 0.85
RECALL_BEST_WHEN_REFERRING = 3
RECALL_FLOOR = 0.3  # under this, not even the best match of a referring question
DROPPED_NOTE = f"{ELISION} Earlier turns of this conversation are omitted."
RECALLED = "Left out above, and bearing on the latest message:"


@dataclass(frozen=True)
class Compressed:
    messages: list[dict[str, Any]]
    requested: Mode
    applied: Mode  # OFF when the history was left as it was
    original_tokens: int
    sent_tokens: int
    recalled: int = 0  # units put back because the question refers to them
    dropped_blocks: int = 0
    summarised_blocks: int = 0
    fallback: str | None = None  # why some blocks were shortened, not summarised
    seconds: float = 0.0

    @property
    def removed_tokens(self) -> int:
        return self.original_tokens - self.sent_tokens


@dataclass
class _Layout:
    """What each block of the body becomes: sent as it is (the open block, and every block in
    ``window``), cut to ``cut``'s units, replaced by its summary, or dropped (the first
    ``dropped`` closed blocks, a note in their place). None of it depends on the question, so
    consecutive requests share it; what is recalled for the question comes after it."""

    blocks: list[Block]
    cut: dict[int, list[set[int]]]  # slot position -> per text part: units kept
    summaries: dict[int, str]  # block index -> its summary
    dropped: int
    note_role: str

    def render(self) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = []
        if self.dropped:
            body.append({"role": self.note_role, "content": DROPPED_NOTE})
            body += [dict(s.message) for b in self.blocks[: self.dropped] for s in b.slots
                     if s.texts is None]  # fmt: skip
        for i in range(self.dropped, len(self.blocks)):
            body += self.block(i)
        return body

    def block(self, i: int) -> list[dict[str, Any]]:
        block = self.blocks[i]
        if i in self.summaries:
            out = [{"role": self.note_role, "content": summary_text(self.summaries[i])}]
            return out + [dict(s.message) for s in block.slots if s.texts is None]
        return [_rendered(slot, self.cut.get(slot.position)) for slot in block.slots]

    def recalled_note(self, recalled: dict[int, list[set[int]]]) -> dict[str, Any] | None:
        """The recalled units, in their order, quoted with who said them, in one note that
        goes just before the last turns (in place they would change the shared prefix)."""
        lines = []
        for block in self.blocks:
            for slot in block.slots:
                parts = recalled.get(slot.position)
                if parts is None or slot.texts is None:
                    continue
                speaker = "User" if slot.role == "user" else "Assistant"
                for text, units in zip(slot.texts, parts, strict=True):
                    if units:
                        lines.append(f"{speaker}: {render(text, units_of(text), units)}")
        if not lines:
            return None
        return {"role": self.note_role, "content": RECALLED + "\n" + "\n".join(lines)}


class Compressor:
    """Thread-safe; one per process is enough (it remembers unit vectors and summaries)."""

    def __init__(
        self,
        embedder: Embedder | None = None,
        settings: CompressionSettings | None = None,
        *,
        summaries: Summaries | None = None,
        memo_size: int = 20_000,
    ) -> None:
        self.embedder = embedder
        self.settings = settings or CompressionSettings()
        self.summaries = summaries or Summaries()
        self.memo_size = memo_size
        # (scope, digest of a unit) -> its vector: no client text is held
        self._vectors: OrderedDict[tuple[str, bytes], NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    # -- the modes ---------------------------------------------------------------------------

    def compress(
        self,
        messages: Sequence[Mapping[str, Any]],
        mode: Mode | str = Mode.EXTRACTIVE,
        *,
        scope: str = "",
        note_role: str = "system",
        question_vector: NDArray[np.float32] | None = None,
        embed_limit: int | None = None,
    ) -> Compressed:
        """``messages`` shortened in ``mode`` (``summary`` needs :meth:`acompress`; here it
        uses the summaries already written and shortens the other blocks).

        ``scope`` keeps remembered vectors apart (one per tenant); ``note_role`` is the role of
        the messages compression adds ("system" for OpenAI, "user" for Anthropic, which has no
        system messages in the list); ``embed_limit`` bounds the units embedded now (``None``:
        all that recall may need)."""
        mode = Mode(mode)
        history, blocks = self._plan(messages, mode)
        return self._compress(
            messages, history, blocks, mode, {}, None, scope, note_role, question_vector,
            embed_limit,
        )  # fmt: skip

    async def acompress(
        self,
        messages: Sequence[Mapping[str, Any]],
        mode: Mode | str = Mode.EXTRACTIVE,
        *,
        summarise: Summarise | None = None,
        scope: str = "",
        note_role: str = "system",
        question_vector: NDArray[np.float32] | None = None,
        embed_limit: int | None = None,
    ) -> Compressed:
        """As :meth:`compress`; in ``summary`` mode the closed blocks' summaries that are not
        known yet are written by ``summarise``. The local work runs on a worker thread."""
        mode = Mode(mode)
        written: dict[int, str] = {}
        fallback = None
        history, blocks = await asyncio.to_thread(self._plan, messages, mode)
        if mode is Mode.SUMMARY:
            closed = [(i, b) for i, b in enumerate(blocks) if b.closed and _has_text(b)]
            if closed and summarise is None:
                fallback = "no summariser"
            elif closed:
                assert summarise is not None
                results = await asyncio.gather(
                    *(self._summary(block, summarise) for _, block in closed),
                    return_exceptions=True,
                )
                for (i, _), result in zip(closed, results, strict=True):
                    if isinstance(result, BaseException):
                        fallback = f"summary failed: {type(result).__name__}: {result}"[:200]
                    else:
                        written[i] = result
        return await asyncio.to_thread(
            self._compress,
            messages, history, blocks, mode, written, fallback, scope, note_role,
            question_vector, embed_limit,
        )  # fmt: skip

    async def _summary(self, block: Block, summarise: Summarise) -> str:
        s = self.settings
        return await self.summaries.get(
            s.summary_model,
            block,
            summarise,
            max_tokens=s.summary_max_tokens,
            timeout_s=s.summary_timeout_s,
        )

    def _plan(
        self, messages: Sequence[Mapping[str, Any]], mode: Mode
    ) -> tuple[History, list[Block]]:
        """The history and its blocks; no blocks when it is to be sent as it is."""
        history = History.of(messages, self.settings.keep_turns)
        if mode is Mode.OFF or history.tokens <= self.settings.min_tokens or not history.body:
            return history, []
        return history, history.blocks(self.settings.block_tokens)

    def _compress(
        self,
        messages: Sequence[Mapping[str, Any]],
        history: History,
        blocks: list[Block],
        mode: Mode,
        summaries: dict[int, str],
        fallback: str | None,
        scope: str,
        note_role: str,
        question_vector: NDArray[np.float32] | None,
        embed_limit: int | None,
    ) -> Compressed:
        started = time.perf_counter()
        if not blocks:
            tokens = history.tokens
            return Compressed(list(map(dict, messages)), mode, Mode.OFF, tokens, tokens)
        if mode is Mode.SUMMARY:
            known = {
                i: self.summaries.known(fingerprint(self.settings.summary_model, b))
                for i, b in enumerate(blocks)
                if b.closed and i not in summaries and _has_text(b)
            }
            summaries = {**summaries, **{i: t for i, t in known.items() if t is not None}}
        else:
            summaries = {}
        cut: dict[int, list[set[int]]] = {}  # slot position -> per text part: the units kept
        if mode is not Mode.WINDOW:
            for i, block in enumerate(blocks):
                if block.closed and i not in summaries:
                    for slot in block.slots:
                        if slot.texts is not None:
                            cut[slot.position] = [
                                kept_units(text, user=slot.role == "user") for text in slot.texts
                            ]
        layout = _Layout(blocks, cut, summaries, 0, note_role)
        layout.dropped = self._dropped(history, layout)
        recalled = self._recall(history, layout, scope, question_vector, embed_limit)
        body = layout.render()
        note = layout.recalled_note(recalled)
        if note is not None:
            body.append(note)
        out = [dict(m) for m in history.head] + body + [dict(m) for m in history.tail]
        sent = count_history(out)
        if sent >= history.tokens:  # nothing gained: send the original, prefix and all
            return Compressed(
                list(map(dict, messages)), mode, Mode.OFF, history.tokens, history.tokens,
                seconds=time.perf_counter() - started,
            )  # fmt: skip
        return Compressed(
            out,
            mode,
            mode,
            history.tokens,
            sent,
            recalled=sum(len(u) for parts in recalled.values() for u in parts),
            dropped_blocks=layout.dropped,
            summarised_blocks=sum(1 for i in summaries if i >= layout.dropped),
            fallback=fallback,
            seconds=time.perf_counter() - started,
        )

    def _dropped(self, history: History, layout: _Layout) -> int:
        """How many of the oldest closed blocks to drop for the history to fit the budget: in
        steps of several blocks, so that the prefix changes once per step, not per block."""
        s = self.settings
        fixed = _count(history.head) + _count(history.tail)
        sizes = [_count(layout.block(i)) for i in range(len(layout.blocks))]
        closed = sum(1 for b in layout.blocks if b.closed)
        step = max(1, s.budget_tokens // (2 * s.block_tokens))
        dropped = 0
        while fixed + sum(sizes[dropped:]) > s.budget_tokens and dropped < closed:
            dropped = min(closed, dropped + step)
        return dropped

    def _recall(
        self,
        history: History,
        layout: _Layout,
        scope: str,
        question_vector: NDArray[np.float32] | None,
        embed_limit: int | None,
    ) -> dict[int, list[set[int]]]:
        """The left-out units the question refers to, per slot position and text part: what
        the cut of closed blocks left out, and all of dropped and summarised blocks."""
        question = _question(history)
        if question is None or self.settings.recall_tokens == 0:
            return {}
        candidates: list[tuple[Slot, int, int, str]] = []  # slot, part, unit, text
        for i, block in enumerate(layout.blocks):
            if not block.closed:
                continue
            for slot in block.slots:
                cut = layout.cut.get(slot.position)
                for part, text in enumerate(slot.texts or ()):
                    for u, unit in enumerate(units_of(text)):
                        aside = i < layout.dropped or i in layout.summaries
                        if aside or (cut is not None and u not in cut[part]):
                            candidates.append((slot, part, u, text[unit.start : unit.end]))
        if not candidates:
            return {}
        cues = cues_of(question)
        cosines = self._cosines(
            question, [c[3] for c in candidates], scope, question_vector, embed_limit
        )
        newest = max(1, history.body[-1].position)
        scored = sorted(
            (
                (lexical_match(cues, text) + cosine + 0.05 * slot.position / newest,
                 slot, part, u, text)
                for (slot, part, u, text), cosine in zip(candidates, cosines, strict=True)
            ),
            key=lambda s: (-s[0], -s[1].position),
        )  # fmt: skip
        best = RECALL_BEST_WHEN_REFERRING if cues.refers_back else 0
        scored = [
            s for rank, s in enumerate(scored)
            if s[0] >= RECALL_THRESHOLD or (rank < best and s[0] >= RECALL_FLOOR)
        ]  # fmt: skip
        spent = 0
        recalled: dict[int, list[set[int]]] = {}
        for _, slot, part, u, text in scored:
            cost = tokens_in(text)
            if spent + cost > self.settings.recall_tokens:
                continue
            parts = recalled.setdefault(slot.position, [set() for _ in slot.texts or ()])
            parts[part].add(u)
            spent += cost
        return recalled

    def _cosines(
        self,
        question: str,
        texts: list[str],
        scope: str,
        question_vector: NDArray[np.float32] | None,
        embed_limit: int | None,
    ) -> list[float]:
        if self.embedder is None:
            return [0.0] * len(texts)
        if question_vector is None:
            question_vector = self.embedder.embed([question])[0]
        vectors = self._vectors_for(texts, scope, embed_limit)
        return [0.0 if v is None else float(v @ question_vector) for v in vectors]

    def _vectors_for(
        self, texts: list[str], scope: str, embed_limit: int | None
    ) -> list[NDArray[np.float32] | None]:
        with self._lock:
            found = [self._vectors.get((scope, digest(t))) for t in texts]
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        if embed_limit is not None:
            missing = missing[:embed_limit]
        if missing:
            fresh = self._embed(scope, missing)
            found = [fresh.get(t) if v is None else v for t, v in zip(texts, found, strict=True)]
        return found

    def _embed(self, scope: str, texts: list[str]) -> dict[str, NDArray[np.float32]]:
        assert self.embedder is not None
        vectors = self.embedder.embed(texts)
        fresh = dict(zip(texts, vectors, strict=True))
        with self._lock:
            for text, vector in fresh.items():
                key = (scope, digest(text))
                self._vectors[key] = vector
                self._vectors.move_to_end(key)
            while len(self._vectors) > self.memo_size:
                self._vectors.popitem(last=False)
        return fresh

    def warm(
        self, messages: Sequence[Mapping[str, Any]], *, scope: str = "", chunk: int = 8
    ) -> int:
        """Embed the units of ``messages`` that recall may weigh later and have no vector yet,
        a few at a time (so that lookups waiting for the model get their turn). Returns how
        many were embedded."""
        if self.embedder is None:
            return 0
        texts: dict[str, None] = {}
        for message in messages:
            if not starts_turn(message) and message.get("role") != "assistant":
                continue
            for text in compressible_texts(message) or ():
                for unit in units_of(text):
                    texts[text[unit.start : unit.end]] = None
        with self._lock:
            missing = [t for t in texts if (scope, digest(t)) not in self._vectors]
        for i in range(0, len(missing), chunk):
            self._embed(scope, missing[i : i + chunk])
        return len(missing)


def _rendered(slot: Slot, kept: list[set[int]] | None) -> dict[str, Any]:
    if slot.texts is None or kept is None:
        return dict(slot.message)
    texts = [render(t, units_of(t), k) for t, k in zip(slot.texts, kept, strict=True)]
    if list(texts) == list(slot.texts):
        return dict(slot.message)
    return with_texts(slot.message, texts)


def _question(history: History) -> str | None:
    for message in reversed(history.tail):
        if starts_turn(message):
            texts = compressible_texts(message)
            return "\n".join(texts) if texts else None
    return None


def _has_text(block: Block) -> bool:
    return any(slot.texts is not None for slot in block.slots)


def _count(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(message_tokens(m) for m in messages)


__all__ = ["Compressed", "CompressionSettings", "Compressor", "Mode"]
