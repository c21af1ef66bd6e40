"""From prompts to vectors: what the model can see of each prompt, and unit vectors for the
ones it can read, remembered per namespace.

The cache asks this part three things: why a prompt's vector cannot stand for it (longer than
the model's window, or illegible to it: it is then answered by the exact tier only), what it
sees of a stored prompt (the spans its vector does not reflect and the words it reads only in
pieces, which decide what may differ in a semantic hit), and the vectors themselves. Recent
vectors are kept in a memo, so a miss is stored without embedding its prompt a second time;
the memo is per namespace, so that no tenant's lookup is faster because another tenant asked
the same thing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from semcache.embedding import Embedder, Reading, ReadingEmbedder
from semcache.errors import SemcacheError
from semcache.memo import CHARS, TextMemo
from semcache.policy import Reason, generic_reading, illegible, with_unbroken_runs

MEMO_SIZE = 4096  # recent prompt vectors kept (about 6 MB at 384 dimensions)
# Characters one token of a model's window can span at most: a WordPiece tokenizer reads a
# word of over 100 characters as one unknown token, and splits words at spaces and
# punctuation. A prompt of more characters than this many per token of the window is longer
# than the window, or is blanks and unreadable runs (exact tier only either way).
CHARS_PER_TOKEN_AT_MOST = 101
GENERIC_WINDOW = 512  # words, for an embedder that does not say its window


def _head(prompt: str, limit: int) -> str:
    """``prompt`` itself when it has at most ``limit`` characters, else its first ``limit``
    characters cut back to the last space (a word cut in two could read as more pieces)."""
    if len(prompt) <= limit:
        return prompt
    head = prompt[:limit]
    space = head.rfind(" ")
    return head[:space] if space > 0 else head


class Vectors:
    """The embedding side of a cache, thread-safe."""

    def __init__(self, embedder: Embedder, *, memo_size: int = MEMO_SIZE) -> None:
        self.embedder = embedder
        # A runtime protocol check walks the protocol's members: once, not per lookup.
        self._reader = embedder if isinstance(embedder, ReadingEmbedder) else None
        self.memo_size = memo_size
        self._memo: OrderedDict[tuple[str, str], NDArray[np.float32]] = OrderedDict()
        self._stored_readings = TextMemo(self._read_one, entries=memo_size, chars=CHARS)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.embedder.name

    def readings(self, prompts: Sequence[str]) -> list[Reading]:
        """What the model sees of each prompt (see :class:`semcache.embedding.Reading`).

        A prompt longer than the model's window can be by its characters alone is read only
        as far as that: the rest cannot change the verdict (too long: exact tier only), and
        reading megabytes costs seconds (see :data:`CHARS_PER_TOKEN_AT_MOST`)."""
        if not prompts:
            return []
        limit = CHARS_PER_TOKEN_AT_MOST * (
            self._reader.max_tokens if self._reader is not None else GENERIC_WINDOW
        )
        heads = [_head(p, limit) for p in prompts]
        if self._reader is not None:
            readings = self._reader.read(heads)
            over = self._reader.max_tokens + 1
            readings = [
                r if h is p else dataclasses.replace(r, tokens=max(r.tokens, over))
                for r, h, p in zip(readings, heads, prompts, strict=True)
            ]
        else:
            readings = [generic_reading(h) for h in heads]
        return [with_unbroken_runs(r, h) for r, h in zip(readings, heads, strict=True)]

    def unembeddable(self, reading: Reading) -> Reason | None:
        """Why a prompt's vector cannot stand for it (``None`` when it can): longer than the
        model's window, or illegible to it (:func:`semcache.policy.illegible`). Such prompts
        are answered and stored by the exact tier only."""
        if self._reader is not None and reading.tokens > self._reader.max_tokens:
            return Reason.PROMPT_TOO_LONG
        return Reason.PROMPT_ILLEGIBLE if illegible(reading) else None

    def stored_reading(self, prompt: str) -> Reading:
        """What the model sees of a stored prompt (memoised: candidates recur)."""
        return self._stored_readings(prompt)

    def _read_one(self, prompt: str) -> Reading:
        return self.readings([prompt])[0]

    def embed(self, texts: Sequence[tuple[str, str]]) -> NDArray[np.float32]:
        """Unit vectors for ``(namespace, text)`` pairs, computing only those not embedded
        recently in the same namespace.

        The memo is what lets a miss be stored without embedding its prompt a second time:
        the lookup that missed has just computed the vector. It is kept per namespace, so a
        tenant's lookup is never faster because another tenant asked the same thing (a timing
        channel that would tell what others ask).
        """
        with self._lock:
            known = {t: self._memo[t] for t in texts if t in self._memo}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            fresh = self.compute([text for _, text in missing])
            with self._lock:
                for key, vector in zip(missing, fresh, strict=True):
                    self._memo[key] = known[key] = vector
                while len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
        return np.stack([known[t] for t in texts])

    def compute(self, texts: Sequence[str]) -> NDArray[np.float32]:
        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise SemcacheError(
                f"embedder {self.embedder.name!r} returned shape {vectors.shape} "
                f"for {len(texts)} texts"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise SemcacheError(f"embedder {self.embedder.name!r} returned a zero or NaN vector")
        return np.ascontiguousarray(vectors / norms, dtype=np.float32)
