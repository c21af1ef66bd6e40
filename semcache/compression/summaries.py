"""Summaries of closed blocks, written by a cheaper model, each written once.

A summary is remembered under a fingerprint of the model, the instructions and the exact
messages it covers, so a block is summarised on the turn it closes and every later turn of the
conversation (on any sidecar that shares the store) reuses the same text, which keeps the
prefix byte-identical. Concurrent requests that need the same summary share one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from semcache.compression.history import Block

# Takes chat messages (a system instruction and a user message with the transcript) and the
# most tokens the answer may have, and returns the model's answer text.
Summarise = Callable[[list[dict[str, str]], int], Awaitable[str]]

INSTRUCTIONS = (
    "You condense part of a conversation between a user and an AI assistant so that the "
    "assistant can continue the conversation without the original. Write a short factual "
    "summary in the language of the conversation. Keep verbatim every name, number, "
    "identifier, date, quantity, code symbol, decision and open question, and who said what "
    "(the user or the assistant). Do not add anything that is not in the transcript."
)
_VERSION = "1"  # change with INSTRUCTIONS, so that older summaries are not reused
PREFIX = "Summary of earlier turns of this conversation: "


def fingerprint(model: str, block: Block) -> str:
    covered = [slot.message for slot in block.slots if slot.texts is not None]
    digest = hashlib.sha256(orjson.dumps([_VERSION, model, covered], option=orjson.OPT_SORT_KEYS))
    return "summary:" + digest.hexdigest()


def request_messages(block: Block) -> list[dict[str, str]]:
    lines = []
    for slot in block.slots:
        if slot.texts is None:
            continue
        speaker = "User" if slot.role == "user" else "Assistant"
        lines.append(f"{speaker}: " + "\n".join(slot.texts))
    return [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Transcript:\n\n" + "\n\n".join(lines)},
    ]


class Summaries:
    """The summaries written so far, in ``store`` (a dict, or a ``diskcache.Cache`` to keep
    them across restarts), and the calls in flight."""

    def __init__(self, store: MutableMapping[str, Any] | None = None) -> None:
        self.store: MutableMapping[str, Any] = {} if store is None else store
        self._in_flight: dict[str, asyncio.Future[str]] = {}
        self.written = 0  # summaries this process asked a model for

    def known(self, key: str) -> str | None:
        try:
            found = self.store.get(key)
        except Exception:  # a damaged store only costs a new summary
            return None
        return found if isinstance(found, str) and found else None

    async def get(
        self, model: str, block: Block, summarise: Summarise, *, max_tokens: int, timeout_s: float
    ) -> str:
        """The summary of ``block``, written now if it is not known.

        Raises:
            Exception: whatever ``summarise`` raised, or ``TimeoutError``; nothing is kept.
        """
        key = fingerprint(model, block)
        known = self.known(key)
        if known is not None:
            return known
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            text = await asyncio.wait_for(summarise(request_messages(block), max_tokens), timeout_s)
            text = text.strip()
            if not text:
                raise ValueError("the summary is empty")
            self.written += 1
            with contextlib.suppress(Exception):  # not kept: summarised again next time
                self.store[key] = text
            future.set_result(text)
            return text
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            del self._in_flight[key]


def summary_text(summary: str) -> str:
    return PREFIX + summary
