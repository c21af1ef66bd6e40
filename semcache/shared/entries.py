"""Cached entries shared by several caches (sidecars) through a Redis stream.

Every cache keeps its own store and FAISS index (Redis 7 has no vector search, so the search
stays local). What one cache changes, it appends to one Redis stream: a stored entry (prompt,
answer, scope, exact key, timestamps, and its vector, so nobody embeds it again), a deletion,
an eviction (the bounds of one copy are the bounds of all), a mark-wrong, a namespace
cleared. Each cache follows the stream on a thread of its own and applies what the others
appended; expiry needs no event (every copy has the same
``expires_at``). A cache remembers how far it read (``replica-position`` in its directory) and
resumes from there after a restart or a disconnection: from the start of the stream when it
is new, which is how it warms up. Its own events are known by its origin id, kept in its
directory too.

Redis away never fails a store: events wait in memory (up to ``max_pending``) and are appended
when Redis answers again; the follower retries on its own. The stream is trimmed to about
``max_length`` events; a cache that fell further behind reads what is left.

A backend with vector search in Redis would replace the local index, not this stream: the
events are the seam.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from semcache.shared.link import RedisLink, RedisUnavailableError

logger = logging.getLogger("semcache.shared")

STREAM = "semcache:entries"


class EntryStream:
    def __init__(
        self,
        link: RedisLink,
        directory: Path,
        apply: Callable[[dict[str, Any], bytes], None],
        *,
        max_length: int = 1_000_000,
        max_pending: int = 100_000,
        block_ms: int = 50,
    ) -> None:
        """``apply(event, vector bytes)`` is called, on the follower thread, for every event
        another cache appended."""
        self.link = link
        self._link = link
        self._directory = directory
        self._apply = apply
        self.max_length = max_length
        self.block_ms = block_ms
        self.origin = self._origin()
        self.position = self._read_position()
        self._pending: collections.deque[dict[bytes, bytes]] = collections.deque(maxlen=max_pending)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0

    def _origin(self) -> bytes:
        path = self._directory / "replica-origin"
        if path.exists():
            return path.read_bytes().strip()
        origin = secrets.token_hex(8).encode()
        path.write_bytes(origin)
        return origin

    def _read_position(self) -> str:
        path = self._directory / "replica-position"
        return path.read_text().strip() if path.exists() else "0"

    def _save_position(self) -> None:
        path = self._directory / "replica-position"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(self.position)
        temporary.replace(path)

    # -- appending -----------------------------------------------------------------------

    def publish(self, events: list[tuple[dict[str, Any], bytes]]) -> None:
        """Append events (each with its vector's bytes, or ``b""``); kept for later when Redis
        is away."""
        with self._lock:
            for event, vector in events:
                self._pending.append({b"o": self.origin, b"e": orjson.dumps(event), b"v": vector})
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            batch = list(self._pending)

            def append(client: Any) -> None:
                pipe = client.pipeline(transaction=False)
                for fields in batch:
                    pipe.xadd(STREAM, fields, maxlen=self.max_length, approximate=True)
                pipe.execute()

            try:
                self._link.call(append)
            except RedisUnavailableError:
                return
            for _ in batch:
                self._pending.popleft()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- following -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="semcache-stream", daemon=True)
        self._thread.start()

    def catch_up(self) -> int:
        """Apply what others appended since the last read, now; how many events were read."""
        try:
            replies: Any = self._link.call(
                lambda client: client.xread({STREAM: self.position}, count=1000)
            )
        except RedisUnavailableError:
            return 0
        read = 0
        for _, messages in replies or []:
            for message_id, fields in messages:
                read += 1
                position = message_id.decode() if isinstance(message_id, bytes) else message_id
                if fields.get(b"o") != self.origin:
                    try:
                        self._apply(orjson.loads(fields[b"e"]), fields.get(b"v", b""))
                        self.applied += 1
                    except Exception:  # one bad event never stops the follower
                        logger.exception("an entry event could not be applied; skipped")
                self.position = position
        if read:
            self._save_position()
        return read

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._flush()
            if self.catch_up() == 0:
                self._stop.wait(self.block_ms / 1000)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._flush()
        self._save_position()
