"""Request batching: small independent prompts merged into one upstream call, and its answer
split back to each caller (:mod:`.merging`, per API :mod:`.protocols`), after waiting together
in a window (:mod:`.window`)."""

from semcache.batching.merging import Cause, Member, Split, new_ids, shares, split
from semcache.batching.protocols import PROTOCOLS, ChatProtocol, MessagesProtocol, Protocol
from semcache.batching.window import Windows

__all__ = [
    "PROTOCOLS",
    "Cause",
    "ChatProtocol",
    "Member",
    "MessagesProtocol",
    "Protocol",
    "Split",
    "Windows",
    "new_ids",
    "shares",
    "split",
]
