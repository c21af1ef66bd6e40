"""Request batching: small independent prompts merged into one upstream call, and its answer
split back to each caller (:mod:`.merging`), after waiting together in a window
(:mod:`.window`)."""

from semcache.batching.merging import (
    Cause,
    Member,
    Split,
    member,
    member_answer,
    merged_request,
    new_ids,
    shares,
    split,
)
from semcache.batching.window import Windows

__all__ = [
    "Cause",
    "Member",
    "Split",
    "Windows",
    "member",
    "member_answer",
    "merged_request",
    "new_ids",
    "shares",
    "split",
]
