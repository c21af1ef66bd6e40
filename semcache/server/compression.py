"""Context compression in the sidecar: the compressor over the cache's embedding model,
summaries written through the upstream pool and kept on disk, the vectors of a conversation's
sentences computed off the request path, and the totals ``/stats`` reports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import diskcache

from semcache.compression import Compressor, Mode, Summaries
from semcache.settings import ServerConfig

logger = logging.getLogger("semcache.server")

SUMMARY_STORE_BYTES = 64 * 1024 * 1024
_MAX_PENDING_WARMS = 8  # more and new ones are dropped: they only save time later


@dataclass
class CompressionTotals:
    requests: int = 0  # sent upstream with compression asked for
    compressed: int = 0  # of those, sent shorter
    original_tokens: int = 0
    sent_tokens: int = 0
    fallbacks: int = 0  # summaries that could not be had, extractive instead
    cached_prompt_tokens: int = 0  # read from the provider's prompt cache, all requests
    saved_usd: float = 0.0  # by compression, after the provider's cached-token discount

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "removed_tokens": self.original_tokens - self.sent_tokens}


class ContextCompression:
    def __init__(self, config: ServerConfig, compressor: Compressor) -> None:
        self.default = Mode(config.compression)
        self.compressor = compressor
        self.totals = CompressionTotals()
        self._summaries_dir = Path(config.cache_dir) / "summaries"
        self._store: diskcache.Cache | None = None
        self._store_lock = threading.Lock()
        self._warmer = concurrent.futures.ThreadPoolExecutor(1, "semcache-compression-warm")
        self._pending_warms = 0

    def open_summaries(self) -> Summaries:
        """The summaries, kept on disk under the cache directory (opened on first use, so
        that a sidecar that never summarises creates nothing)."""
        summaries = self.compressor.summaries
        with self._store_lock:
            if self._store is None:
                try:
                    self._store = diskcache.Cache(
                        str(self._summaries_dir), size_limit=SUMMARY_STORE_BYTES
                    )
                    summaries.store = self._store
                except Exception:  # kept in memory instead: summarised again after a restart
                    logger.exception("opening the summary store in %s failed", self._summaries_dir)
                    self._store = diskcache.Cache()  # a temporary one, removed at close
                    summaries.store = self._store
        return summaries

    def warm_later(self, messages: Sequence[Mapping[str, Any]], scope: str) -> None:
        """Embed the conversation's sentences in the background, one conversation at a time,
        so that the next turn's recall finds them ready."""
        if self.compressor.embedder is None or self._pending_warms >= _MAX_PENDING_WARMS:
            return
        self._pending_warms += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._warmer, self._warm, list(messages), scope)
        future.add_done_callback(self._warmed)

    def _warm(self, messages: list[Mapping[str, Any]], scope: str) -> None:
        try:
            self.compressor.warm(messages, scope=scope)
        except Exception:  # only time is lost: the next request embeds what it needs
            logger.exception("embedding a conversation's sentences in the background failed")

    def _warmed(self, _: asyncio.Future[None]) -> None:
        self._pending_warms -= 1

    def close(self) -> None:
        self._warmer.shutdown(wait=True, cancel_futures=True)
        with self._store_lock, contextlib.suppress(Exception):
            if self._store is not None:
                self._store.close()
