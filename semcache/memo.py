"""Memos of what the guards and the verifier read from prompt texts, bounded by the length of
the texts they hold as well as by their number.

A stored prompt is read again each time it is a candidate, so its reading is worth keeping. An
``lru_cache`` of 16,384 entries is bounded only in entries, and a reading costs memory in
proportion to its text (word tuples, match objects): at 20,000-character prompts, as a
retrieval-augmented app sends, the guards' memos held about 1 MiB per text, so full memos
would hold gigabytes. These memos also stop at ``chars`` characters of text in all; a text
longer than that is read each time and never kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import update_wrapper
from typing import Generic, TypeVar

T = TypeVar("T")

ENTRIES = 16384
# Characters of text a memo holds at most. Short prompts (under 120 characters on average)
# reach the entry limit first, so for them this changes nothing.
CHARS = 2_000_000


class TextMemo(Generic[T]):
    """A least-recently-used memo of a one-text function, within ``entries`` texts and
    ``chars`` characters of text."""

    def __init__(self, function: Callable[[str], T], *, entries: int, chars: int) -> None:
        self.function = function
        self.entries = entries
        self.chars = chars
        self.held_chars = 0
        self._memo: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> T:
        # A hit takes no lock: each OrderedDict operation is atomic (it is implemented in C),
        # and an entry evicted meanwhile is only read again.
        try:
            value = self._memo[text]
            self._memo.move_to_end(text)
            return value
        except KeyError:
            pass
        value = self.function(text)
        if len(text) > self.chars:
            return value
        with self._lock:
            if text not in self._memo:
                self._memo[text] = value
                self.held_chars += len(text)
                while len(self._memo) > self.entries or self.held_chars > self.chars:
                    old, _ = self._memo.popitem(last=False)
                    self.held_chars -= len(old)
        return value

    def __len__(self) -> int:
        return len(self._memo)

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()
            self.held_chars = 0


def text_memo(
    entries: int = ENTRIES, chars: int = CHARS
) -> Callable[[Callable[[str], T]], TextMemo[T]]:
    """Decorate a function of one text with a :class:`TextMemo`."""

    def decorate(function: Callable[[str], T]) -> TextMemo[T]:
        memo = TextMemo(function, entries=entries, chars=chars)
        update_wrapper(memo, function)  # its name and docstring
        return memo

    return decorate
