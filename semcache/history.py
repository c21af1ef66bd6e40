"""Follow-ups under reworded history: earlier user turns matched by meaning, not bytes.

A follow-up ("what are its types?") is answered by what was said before it, so the cache keys
it on the earlier turns: by default byte for byte, and a conversation whose first question was
worded differently never finds the follow-ups cached after the first wording. With this
module (the sidecar's ``history_match = "meaning"``), each earlier user turn is looked up in
its own place, after the turns before it (themselves recognised first), exactly as it was
looked up when it was asked; when that lookup is a hit, the turn is keyed by the stored
prompt's text instead of its own. So a turn is taken for another only on a hit the cache
would have served in its place: the same floor, guards, verifier and error bound. The
assistant's turns and every other field stay verbatim, so a follow-up is never served an
answer made after another answer, or after a first question the cache would not have served.

No I/O here: the caller passes how to build the cache request of a shortened conversation and
how to look one up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from semcache.decision import Decision
from semcache.keys import CacheRequest

RequestOf = Callable[[list[Any]], CacheRequest | None]
Lookup = Callable[[CacheRequest], Awaitable[Decision]]


def earlier_user_turns(turns: Sequence[Any]) -> list[int]:
    """Positions of the user turns before the last turn."""
    return [
        i
        for i, turn in enumerate(turns[:-1])
        if isinstance(turn, dict) and turn.get("role") == "user"
    ]


async def recognised_turns(
    turns: Sequence[Any], request_of: RequestOf, lookup: Lookup, *, max_user_turns: int
) -> list[Any] | None:
    """``turns`` (the last one the user's current message) with each earlier user turn that is
    a cache hit in its own place carrying the stored prompt's text; ``None`` when no turn
    changed, or when more than ``max_user_turns`` user turns came before (each costs a lookup:
    long conversations are keyed byte for byte).

    ``request_of(turns[: i + 1])`` is the cache request the conversation had when turn ``i``
    was the user's current message (``None`` if it had none: a turn with non-text parts)."""
    earlier = earlier_user_turns(turns)
    if not earlier or len(earlier) > max_user_turns:
        return None
    recognised = list(turns)
    changed = False
    for i in earlier:
        request = request_of(recognised[: i + 1])
        if request is None:
            continue
        hit = (await lookup(request)).hit
        if hit is not None and hit.prompt != request.prompt:
            recognised[i] = {**recognised[i], "content": hit.prompt}
            changed = True
    return recognised if changed else None
