"""``SemanticCache``: the in-process core that the sidecar, the benchmarks and users share.

A lookup goes through three tiers, cheapest first, and stops at the first that decides:

1. exact: the hash of scope and normalised prompt, answered from the store with no embedding;
2. empty scope: nothing to compare with, so a miss without computing an embedding;
3. semantic: embed the prompt, search the scope's index, keep the candidates whose cosine
   similarity reaches ``min_similarity`` and that pass the guards of :mod:`semcache.policy`;
4. verification: the verifier (:mod:`semcache.verification`) gives each of the first
   ``verify_top`` of them (by default only the nearest) a calibrated probability of being
   right, and the most probable is served when it reaches ``min_confidence``. Without a
   verifier the first candidate is served.

Every method is synchronous and thread-safe; each has an awaitable twin (``aget``, ``aput``, …)
that runs it on the cache's worker threads, so an event loop never blocks on the model, FAISS or
disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import diskcache
import filelock
import numpy as np
import orjson

from semcache.catalog import Catalog
from semcache.config import CacheConfig, default_models_dir
from semcache.decision import Choice, Decision, Hit, HitDecider, Screened
from semcache.derived import DerivedState
from semcache.embedding import Embedder, make_embedder, set_threads
from semcache.entries import DiskStore, Entry, EntryStore, Written, encode_entry
from semcache.error_bound import ErrorBound
from semcache.errors import (
    CacheLockedError,
    ConfigError,
    CorruptEntryError,
    InvalidRequestError,
    StoreError,
)
from semcache.index import IndexMaker, ScopedIndex
from semcache.keys import DEFAULT_NAMESPACE, CacheRequest, check_prompt, normalize_prompt
from semcache.persistence import Persistence
from semcache.policy import (
    Reason,
)
from semcache.shadow import Verdict, compare_answers
from semcache.shared.entries import EntryStream
from semcache.shared.link import RedisLink
from semcache.vectors import Vectors
from semcache.verification import Verifier, resolve_verifier

logger = logging.getLogger("semcache")

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="SemanticCache")

_SNAPSHOT_FILE = "index.snapshot"
COMMIT_CHUNK = 64  # entries written per transaction (and per hold of the cache's lock)
_LOCK_FILE = "semcache.lock"
_ERROR_BOUND_FILE = "error_bound.json"  # the labelled tallies of max_error_rate
# What a write to a full, read-only or failing disk raises through diskcache.
_WRITE_FAILURES = (sqlite3.Error, OSError, diskcache.Timeout)


class _Unset:
    """The default of an argument whose ``None`` means something."""


_UNSET = _Unset()


def _offloaded(
    method: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """The awaitable form of a cache method: the same code, run on the cache's threads."""

    async def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(method, self, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    run.__name__ = f"a{method.__name__}"
    run.__qualname__ = f"SemanticCache.a{method.__name__}"
    run.__doc__ = f"Awaitable :meth:`{method.__name__}`, run on the cache's worker threads."
    return run


class SemanticCache:
    """A semantic cache of prompt → response in a local directory.

    Args:
        directory: where the entries (diskcache) and the index snapshot live; created if absent.
        embedder: anything with ``name`` and ``embed(texts)``; defaults to the model named by
            ``model`` (see ``models/README.md``) on the ``embedding_backend``, loaded on first
            use.
        verifier: the second stage: a :class:`~semcache.verification.Verifier`, a name or path,
            ``"auto"``, or ``None``/``"none"`` for none; absent, the one ``config.verifier``
            names.
        config: a :class:`CacheConfig`; or pass its fields as keyword options.
        clock: seconds since the epoch; tests pass a fake one to drive expiry.
        store: opens the entry store in a folder (:class:`semcache.entries.EntryStore`; the
            embedded diskcache one by default).
        index_maker: makes each scope's vector index (:class:`semcache.index.IndexMaker`;
            FAISS by default).
        redis: a ``redis://`` URL (or a :class:`~semcache.shared.link.RedisLink`) shared with
            other caches: what each stores, deletes or marks wrong reaches all of them (see
            :mod:`semcache.shared.entries`); the search stays local.

    Raises:
        ConfigError: an option is unknown or invalid.
        ModelNotFoundError: the model cannot be found on this machine.
        CacheLockedError: another process has ``directory`` open.
        StoreError: ``directory`` holds a store that cannot be opened.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        embedder: Embedder | None = None,
        verifier: Verifier | str | _Unset | None = _UNSET,
        config: CacheConfig | None = None,
        clock: Callable[[], float] = time.time,
        store: Callable[[Path], EntryStore] = DiskStore,
        index_maker: IndexMaker | None = None,
        redis: str | RedisLink | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise ConfigError("pass either config or keyword options, not both")
        self.config = config if config is not None else CacheConfig.from_options(**options)
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {self.directory} as a cache directory: {exc}") from exc
        self._clock = clock
        set_threads(self.config.threads)
        self._embedder: Embedder = embedder or make_embedder(
            self.config.model,
            models_dir=self.config.models_dir,
            backend=self.config.embedding_backend,
            threads=self.config.threads,
            batch_size=self.config.embed_batch_size,
        )
        self._vectors = Vectors(self._embedder)
        self.verifier = self._verifier(verifier)
        rate = self.config.max_error_rate
        self.error_bound = None if rate is None else ErrorBound(rate)
        self._decider = HitDecider(self.config, self.verifier, self._vectors, self.error_bound)
        # One process owns a directory: the catalog and the index are kept in its memory, and a
        # second writer would make them silently stale. flock is released by the kernel when
        # the owner dies, even by SIGKILL, so a crash never leaves the directory locked.
        self._dir_lock = filelock.FileLock(self.directory / _LOCK_FILE, timeout=0)
        try:
            self._dir_lock.acquire()
        except filelock.Timeout as exc:
            raise CacheLockedError(
                f"{self.directory} is open in another process; a cache directory can be used "
                f"by one process at a time (share a cache between processes with the sidecar)"
            ) from exc
        except OSError as exc:
            raise StoreError(
                f"cannot use {self.directory} as a cache directory: {exc.strerror or exc} "
                f"(it must be writable; nothing in it was changed)"
            ) from exc
        if self.error_bound is not None:
            self.error_bound.restore(_read_json(self.directory / _ERROR_BOUND_FILE))
        self._lock = threading.RLock()
        self._snapshot_lock = threading.Lock()  # one snapshot writer at a time
        self._snapshot_version = -1
        self._counters: Counter[str] = Counter()
        self._executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="semcache")
        self._exact_executor = ThreadPoolExecutor(2, thread_name_prefix="semcache-exact")
        self._closed = False
        self._stream: EntryStream | None = None  # shared with other caches (redis)
        try:
            self._store: EntryStore = store(self.directory / "entries")
            self._derived = DerivedState(
                Catalog(),
                ScopedIndex(
                    exact_max=self.config.exact_index_max,
                    nprobe=self.config.ivf_nprobe,
                    maker=index_maker,
                ),
            )
            self._persistence = Persistence(
                self.directory / _SNAPSHOT_FILE, self._store, self._vectors, self._clock
            )
            loaded = self._persistence.load(self._derived, self._counters)
            self._derived, self._snapshot_version = loaded
            if self._counters["rebuild"]:
                self._checkpoint_when_indexed()
            if redis is not None:
                link = redis if isinstance(redis, RedisLink) else RedisLink(redis)
                self._stream = EntryStream(link, self.directory, self._apply_event)
                self._stream.catch_up()  # warm from what the others stored
                self._stream.start()
        except BaseException:
            self._executor.shutdown(wait=False)
            self._exact_executor.shutdown(wait=False)
            self._dir_lock.release()
            raise

    def _verifier(self, given: Verifier | str | _Unset | None) -> Verifier | None:
        """The verifier object for the constructor's ``verifier`` argument: absent means the
        config's (``"auto"`` by default), ``None`` or ``"none"`` means none.

        Raises:
            ConfigError: a value that is neither a verifier, a name nor None.
        """
        spec = self.config.verifier if isinstance(given, _Unset) else given
        if spec is None or isinstance(spec, str):
            return resolve_verifier(
                spec, self._embedder.name, self.config.models_dir or default_models_dir()
            )
        if not callable(getattr(spec, "probabilities", None)):
            raise ConfigError(
                f"verifier must be a Verifier, a name or path, 'auto', 'none' or None; got "
                f"{type(spec).__name__}"
            )
        return spec

    # -- the simple API -------------------------------------------------------------------

    def put(
        self,
        prompt: str,
        response: Any,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        context: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
    ) -> int:
        """Store ``response`` (any JSON value) for ``prompt``; returns the entry id.

        A prompt equal to a stored one in the same scope (after normalisation) replaces it.

        Raises:
            InvalidRequestError: the prompt is empty or not a string, the response is not JSON,
                or an option is out of range.
        """
        request = CacheRequest(
            prompt=prompt, namespace=namespace, context=context or {}, ttl_s=ttl_s
        )
        return self.store_many([request], [response])[0]

    def get(
        self,
        prompt: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        context: Mapping[str, Any] | None = None,
        min_similarity: float | None = None,
    ) -> Hit | None:
        """The stored answer for ``prompt`` or a paraphrase of it, or ``None``.

        Raises:
            InvalidRequestError: the prompt is empty or not a string, or an option is invalid.
        """
        request = CacheRequest(
            prompt=prompt,
            namespace=namespace,
            context=context or {},
            min_similarity=min_similarity,
        )
        return self.lookup_many([request])[0].hit

    def put_many(
        self,
        prompts: Sequence[str],
        responses: Sequence[Any],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        context: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
    ) -> list[int]:
        """:meth:`put` for many prompts of one scope, with one batched embedding call."""
        requests = [
            CacheRequest(
                prompt=_prompt(p, i), namespace=namespace, context=context or {}, ttl_s=ttl_s
            )
            for i, p in enumerate(_sequence(prompts, "prompts"))
        ]
        return self.store_many(requests, responses)

    def get_many(
        self,
        prompts: Sequence[str],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        context: Mapping[str, Any] | None = None,
        min_similarity: float | None = None,
    ) -> list[Hit | None]:
        """:meth:`get` for many prompts of one scope, with one batched embedding call."""
        requests = [
            CacheRequest(
                prompt=_prompt(p, i),
                namespace=namespace,
                context=context or {},
                min_similarity=min_similarity,
            )
            for i, p in enumerate(_sequence(prompts, "prompts"))
        ]
        return [decision.hit for decision in self.lookup_many(requests)]

    # -- the request API (used by the sidecar) -------------------------------------------

    def lookup(self, request: CacheRequest) -> Decision:
        """Decide whether ``request`` is answered from the cache, and why."""
        return self.lookup_many([request])[0]

    def store(self, request: CacheRequest, response: Any, *, embed: bool = True) -> int:
        """Store ``response`` for ``request``; returns the entry id. With ``embed=False`` the
        entry is answered by the exact tier only (no call of the model: what a busy sidecar
        stores)."""
        return self.store_many([request], [response], embed=embed)[0]

    def lookup_exact(self, request: CacheRequest) -> Decision | None:
        """The exact tier alone: a hit for the same scope and normalised prompt, or ``None``.
        Never touches the model, so it need not wait for embedding work in progress."""
        self._check_open()
        decision = self._lookup_exact(request, self._clock())
        if decision is not None:
            with self._lock:
                self._counters[f"lookup.{decision.reason.value}"] += 1
        return decision

    async def alookup_exact(self, request: CacheRequest) -> Decision | None:
        """Awaitable :meth:`lookup_exact`, on threads of its own: an exact hit never queues
        behind embedding work on the cache's worker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._exact_executor, self.lookup_exact, request)

    def prepare(self, request: CacheRequest) -> None:
        """Compute the vector of ``request``'s prompt now, so that a lookup of it soon after
        finds it among the recent vectors of its namespace (it changes and counts nothing)."""
        self._check_open()
        reading = self._vectors.readings([request.prompt])[0]
        if self._vectors.unembeddable(reading) is None:
            self._vectors.embed([(request.namespace, request.prompt)])

    def lookup_many(self, requests: Sequence[CacheRequest]) -> list[Decision]:
        """:meth:`lookup` for many requests, possibly of different scopes, with one batched
        embedding call for those that reach the semantic tier."""
        self._check_open()
        now = self._clock()
        decisions: list[Decision | None] = [None] * len(requests)
        semantic: list[int] = []
        for i, request in enumerate(requests):
            exact = self._lookup_exact(request, now)
            if exact is not None:
                decisions[i] = exact
            elif self._index.size(request.scope.key) == 0:
                decisions[i] = Decision(hit=None, reason=Reason.EMPTY_SCOPE)
            else:
                semantic.append(i)
        readings = dict(
            zip(
                semantic,
                self._vectors.readings([requests[i].prompt for i in semantic]),
                strict=True,
            )
        )
        for i in list(semantic):
            reason = self._vectors.unembeddable(readings[i])
            if reason is not None:
                decisions[i] = Decision(hit=None, reason=reason)
                semantic.remove(i)
        if semantic:
            vectors = self._vectors.embed(
                [(requests[i].namespace, requests[i].prompt) for i in semantic]
            )
            by_scope: dict[str, list[int]] = {}
            for row, i in enumerate(semantic):
                by_scope.setdefault(requests[i].scope.key, []).append(row)
            screened: dict[int, Screened] = {}

            def fetch(entry_id: int) -> Entry | None:
                return self._fetch(entry_id, now)

            for scope, rows in by_scope.items():
                scores, ids = self._index.search(scope, vectors[rows], self.config.top_k)
                for row, row_scores, row_ids in zip(rows, scores, ids, strict=True):
                    i = semantic[row]
                    screened[i] = self._decider.screen(
                        requests[i], readings[i], vectors[row], row_scores, row_ids, fetch
                    )
            vector_of = {i: vectors[row] for row, i in enumerate(semantic)}
            for i, outcome in self._decider.choose(requests, screened, vector_of).items():
                decisions[i] = (
                    self._serve(
                        outcome.entry, outcome.score, Reason.SEMANTIC, now, outcome.confidence
                    )
                    if isinstance(outcome, Choice)
                    else outcome
                )
        result = [d for d in decisions if d is not None]
        assert len(result) == len(requests)
        with self._lock:
            for decision in result:
                self._counters[f"lookup.{decision.reason.value}"] += 1
        return result

    def store_many(
        self, requests: Sequence[CacheRequest], responses: Sequence[Any], *, embed: bool = True
    ) -> list[int]:
        """:meth:`store` for many requests, with one batched embedding call.

        Raises:
            InvalidRequestError: the lengths differ, a response is not JSON, or an entry alone
                is larger than ``max_bytes``.
        """
        self._check_open()
        responses = _sequence(responses, "responses")
        if len(responses) != len(requests):
            raise InvalidRequestError(
                f"got {len(requests)} prompts but {len(responses)} responses", field="responses"
            )
        for i, response in enumerate(responses):
            try:
                orjson.dumps(response)
            except TypeError as exc:
                raise InvalidRequestError(
                    f"response {i} is not JSON-serialisable: {exc}", field="response"
                ) from exc
        if not requests:
            return []
        readings = self._vectors.readings([r.prompt for r in requests]) if embed else []
        embedded = [
            i for i, reading in enumerate(readings) if self._vectors.unembeddable(reading) is None
        ]
        vectors = (
            self._vectors.embed([(requests[i].namespace, requests[i].prompt) for i in embedded])
            if embedded
            else None
        )
        vector_of = (
            {i: vectors[row] for row, i in enumerate(embedded)} if vectors is not None else {}
        )
        now = self._clock()
        entries = []
        for i, (request, response) in enumerate(zip(requests, responses, strict=True)):
            ttl_s = request.ttl_s if request.ttl_s is not None else self.config.ttl_s
            vector = vector_of.get(i)
            entries.append(
                Entry(
                    entry_id=0,
                    prompt=request.prompt,
                    response=response,
                    namespace=request.namespace,
                    scope=request.scope.key,
                    exact_key=request.exact_key,
                    created_at=now,
                    expires_at=None if ttl_s is None else now + ttl_s,
                    embedder=None if vector is None else self._embedder.name,
                    vector=vector,
                )
            )
        if self.config.max_bytes is not None:
            for i, entry in enumerate(entries):
                size = len(encode_entry(entry))
                if size > self.config.max_bytes:
                    raise InvalidRequestError(
                        f"entry {i} takes {size} bytes, more than max_bytes "
                        f"({self.config.max_bytes}) allows for the whole cache",
                        field="response",
                    )
        written = []
        # In chunks, each one transaction: lookups wait for one chunk's disk write at most,
        # never for a whole bulk load.
        for start in range(0, len(entries), COMMIT_CHUNK):
            chunk = entries[start : start + COMMIT_CHUNK]
            with self._lock:
                written += self._commit(chunk)
                self._counters["stored"] += len(chunk)
                self._remove_expired(now)
                self._enforce_bounds()
        if self._stream is not None:
            self._stream.publish([_put_event(entry) for entry in entries])
        return [result.entry_id for result in written]

    # -- management ------------------------------------------------------------------------

    def entry(self, entry_id: int) -> Entry | None:
        """The stored entry with this id, or ``None``."""
        self._check_open()
        try:
            return self._store.get(entry_id)
        except CorruptEntryError:
            return None

    def marked_wrong(self, entry_id: int) -> Entry | None:
        """The entry with this id if it was marked wrong (kept for audit), or ``None``."""
        self._check_open()
        try:
            return self._store.get_wrong(entry_id)
        except CorruptEntryError:
            return None

    def entries(
        self,
        *,
        namespace: str | None = None,
        marked_wrong: bool = False,
        after: int = 0,
        limit: int = 50,
    ) -> list[Entry]:
        """A page of entries in id order: those with an id above ``after``, at most ``limit``,
        of ``namespace`` (or every namespace); the live ones, or with ``marked_wrong`` those
        taken out of service."""
        self._check_open()
        if marked_wrong:
            ids = self._store.wrong_ids()
            fetch = self.marked_wrong
        else:
            with self._lock:
                ids = sorted(self._catalog.in_namespace(namespace))
            fetch = self.entry
        page: list[Entry] = []
        for entry_id in ids:
            if entry_id <= after:
                continue
            entry = fetch(entry_id)
            if entry is None or (namespace is not None and entry.namespace != namespace):
                continue
            page.append(entry)
            if len(page) >= limit:
                break
        return page

    def namespaces(self) -> dict[str, int]:
        """Every namespace with live entries, and how many each holds."""
        self._check_open()
        with self._lock:
            counts: Counter[str] = Counter(item.namespace for _, item in self._catalog.items())
        return dict(sorted(counts.items()))

    def delete(self, entry_id: int) -> bool:
        """Remove one entry; ``False`` if there was none with this id."""
        self._check_open()
        with self._lock:
            entry = self._stored(entry_id)
            deleted = self._store.delete_many([entry_id])
            self._forget([entry_id])
        if deleted and entry is not None:
            self._publish_removal("delete", entry)
        return bool(deleted)

    def mark_wrong(self, entry_id: int) -> bool:
        """Take an entry out of service for good, keeping its record for audit (``w:<id>`` in
        the store); ``False`` if there was none with this id.

        The mark does not feed ``max_error_rate``'s tallies: only wrong hits get marked, and
        the right hits served beside them are never reported, so counting the marks would
        put every served score's error above what it is, and the bound would climb until
        nothing is served (BANKING77's stream at 0.02: 116 hits, against 3,828 without counting
        them). The tallies learn
        from labels drawn without regard to the outcome (misses' candidates, shadow checks)."""
        self._check_open()
        with self._lock:
            entry = self._stored(entry_id)
            marked = self._store.quarantine(entry_id)
            self._forget([entry_id])
            if marked:
                self._counters["marked_wrong"] += 1
        if marked and entry is not None:
            self._publish_removal("wrong", entry)
        return marked

    def _stored(self, entry_id: int) -> Entry | None:
        if self._stream is None:
            return None
        try:
            return self._store.get(entry_id)
        except CorruptEntryError:
            return None

    def _publish_removal(self, op: str, entry: Entry) -> None:
        if self._stream is not None:
            event = {"op": op, "scope": entry.scope, "exact_key": entry.exact_key}
            self._stream.publish([(event, b"")])

    def _apply_event(self, event: dict[str, Any], vector: bytes) -> None:
        """What another cache did, done here (see :mod:`semcache.shared.entries`); never
        appended again."""
        if self._closed:
            return
        op = event.get("op")
        if op == "put":
            self._apply_put(event, vector)
        elif op in ("delete", "evict", "wrong"):
            with self._lock:
                entry_id = self._store.find_exact(str(event["exact_key"]))
                if entry_id is None:
                    return
                entry = self._fetch(entry_id, self._clock())
                if entry is None or entry.scope != event["scope"]:
                    return
                if op != "wrong":
                    self._store.delete_many([entry_id])
                else:
                    self._store.quarantine(entry_id)
                    self._counters["marked_wrong"] += 1
                self._forget([entry_id])
        elif op == "clear":
            with self._lock:
                ids = self._catalog.in_namespace(event.get("namespace"))
                self._store.delete_many(ids)
                self._forget(ids)

    def _apply_put(self, event: dict[str, Any], raw: bytes) -> None:
        now = self._clock()
        expires_at = event.get("expires_at")
        if expires_at is not None and expires_at <= now:
            return
        embedder = event.get("embedder")
        vector = None
        if raw and embedder == self._embedder.name:
            vector = np.frombuffer(raw, dtype=np.float32).copy()
        elif embedder is not None:  # another model's vector: this cache's own
            vector = self._vectors.embed([(str(event["namespace"]), str(event["prompt"]))])[0]
            embedder = self._embedder.name
        entry = Entry(
            entry_id=0,
            prompt=str(event["prompt"]),
            response=event["response"],
            namespace=str(event["namespace"]),
            scope=str(event["scope"]),
            exact_key=str(event["exact_key"]),
            created_at=float(event["created_at"]),
            expires_at=None if expires_at is None else float(expires_at),
            embedder=None if vector is None else embedder,
            vector=vector,
        )
        with self._lock:
            self._commit([entry])
            self._counters["replicated"] += 1
            self._enforce_bounds()

    def warm_up(self) -> None:
        """Load the embedding model and the verifier now rather than on the first lookup."""
        self._check_open()
        normalize_prompt("warm up é")  # builds its table of format characters (0.1 s)
        vectors = self._vectors.compute(["warm up"])
        if self.verifier is not None:
            self.verifier.probabilities(["warm up"], ["warm up"], vectors, vectors)

    def compare_answers(self, cached: str, fresh: str, agreement: float) -> Verdict:
        """Whether two answers agree in meaning (see :mod:`semcache.shadow`), by this cache's
        embedding model."""
        self._check_open()
        return compare_answers(cached, fresh, embed=self._vectors.compute, agreement=agreement)

    def clear(self, namespace: str | None = None) -> int:
        """Remove every entry of ``namespace``, or of all namespaces; returns how many."""
        self._check_open()
        with self._lock:
            ids = self._catalog.in_namespace(namespace)
            deleted = self._store.delete_many(ids)
            self._forget(ids)
        if self._stream is not None:
            self._stream.publish([({"op": "clear", "namespace": namespace}, b"")])
        return len(deleted)

    def expire(self) -> int:
        """Remove entries whose lifetime has passed now (lookups never serve them anyway)."""
        self._check_open()
        with self._lock:
            return self._remove_expired(self._clock())

    def __len__(self) -> int:
        with self._lock:
            return len(self._catalog)

    def stats(self) -> dict[str, Any]:
        """Counts of entries, lookups by outcome, evictions and repairs since opening."""
        with self._lock:
            counters = dict(self._counters)
            lookups = {
                k.removeprefix("lookup."): v for k, v in counters.items() if k.startswith("lookup.")
            }
            hits = sum(v for k, v in lookups.items() if Reason(k).is_hit)
            total = sum(lookups.values())
            return {
                "entries": len(self._catalog),
                "bytes": self._catalog.total_bytes,
                "scopes": self._catalog.scope_count,
                "indexes": self._index.describe(),
                "embedder": self._embedder.name,
                "min_similarity": self.min_similarity,
                "verifier": None if self.verifier is None else self.verifier.name,
                "min_confidence": self.min_confidence,
                "lookups": total,
                "hits": hits,
                "hit_rate": hits / total if total else 0.0,
                "outcomes": lookups,
                "stored": counters.get("stored", 0),
                "evicted": counters.get("evicted", 0),
                "expired": counters.get("expired", 0),
                "corrupt_entries_removed": counters.get("corrupt", 0),
                "marked_wrong": counters.get("marked_wrong", 0),
                "index_rebuilds": counters.get("rebuild", 0),
                "index_retrains": self._index.rebuilds,
                "max_error_rate": self.config.max_error_rate,
                "error_bound": None if self.error_bound is None else self.error_bound.describe(),
            }

    def checkpoint(self) -> bool:
        """Save the index snapshot now, so the next open need not rebuild it; ``False`` when
        nothing was added or removed since the last one.

        Lookups never wait for it: the catalog is copied under the cache's lock, each scope's
        index is serialised under its own read lock (stores to that scope wait), and the file
        is written after.
        """
        self._check_open()
        self._save_error_bound()
        with self._snapshot_lock:
            with self._lock:
                if self._closed or self._store.version == self._snapshot_version:
                    return False  # closed meanwhile: close() saved it
            snapshot = self._persistence.capture(self._derived, self._lock)
            if snapshot is None:
                return False
            self._persistence.write(snapshot)
            self._snapshot_version = snapshot.store_version
            return True

    def _checkpoint_when_indexed(self) -> None:
        """After a rebuild from the store, save the snapshot in the background once the
        indexes it left due for training are swapped in: serving does not wait for the write
        (a million vectors take seconds), and the snapshot holds the trained indexes, so the
        next open reads it instead of rebuilding. Until then a crash costs only a rebuild."""

        def run() -> None:
            self._index.wait_for_rebuilds()
            try:
                self.checkpoint()
            except StoreError:  # closed meanwhile: close() saved it
                pass
            except OSError as exc:
                logger.warning("could not save the rebuilt index (rebuilt on next open): %s", exc)

        threading.Thread(target=run, name="semcache-checkpoint", daemon=True).start()

    def feedback(
        self, request: CacheRequest, decision: Decision, *, right: bool, weight: float = 1.0
    ) -> bool:
        """Tell the error bound (``max_error_rate``) whether the candidate of ``decision`` (a
        lookup of ``request``, hit or miss) had the right answer for it. ``weight`` counts the
        label as that many: the inverse of the share of such candidates that get labelled
        (a shadow check of one hit in ten weighs 10). ``False`` when nothing was recorded: no
        bound is set, or the decision had no candidate that reached the last stage."""
        self._check_open()
        score = self._decider.bound_score(decision.score, decision.confidence)
        if self.error_bound is None or score is None or decision.reason is Reason.EXACT:
            return False
        self.error_bound.record(request.namespace, score, wrong=not right, weight=weight)
        return True

    def _save_error_bound(self) -> None:
        if self.error_bound is None:
            return
        path = self.directory / _ERROR_BOUND_FILE
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_bytes(orjson.dumps(self.error_bound.state()))
            os.replace(partial, path)
        except OSError as exc:
            logger.warning("could not save the error bound's tallies: %s", exc)

    def wait_for_index(self, timeout_s: float | None = None) -> None:
        """Return once no index is being retrained in the background (a scope that outgrew
        its index is retrained beside it and swapped in; lookups never wait for that, but a
        benchmark or a test may want the retrained one)."""
        self._index.wait_for_rebuilds(timeout_s)

    def close(self) -> None:
        """Save the index snapshot, close the store and release the directory. Idempotent."""
        if self._stream is not None and not self._closed:
            self._stream.close()  # the follower stops before the store closes
        with self._snapshot_lock, self._lock:  # the order checkpoint() takes them in
            if self._closed:
                return
            self._closed = True
            self._save_error_bound()
            try:
                snapshot = self._persistence.capture(self._derived)
                if snapshot is not None:
                    self._persistence.write(snapshot)
            except OSError as exc:
                logger.warning("could not save the index snapshot (rebuilt on next open): %s", exc)
            finally:
                self._store.close()
                self._dir_lock.release()
        self._executor.shutdown(wait=True)
        self._exact_executor.shutdown(wait=True)

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    aput = _offloaded(put)
    aget = _offloaded(get)
    aput_many = _offloaded(put_many)
    aget_many = _offloaded(get_many)
    alookup = _offloaded(lookup)
    astore = _offloaded(store)
    alookup_many = _offloaded(lookup_many)
    aprepare = _offloaded(prepare)
    astore_many = _offloaded(store_many)
    adelete = _offloaded(delete)
    aclear = _offloaded(clear)
    amark_wrong = _offloaded(mark_wrong)
    acheckpoint = _offloaded(checkpoint)
    aentry = _offloaded(entry)
    amarked_wrong = _offloaded(marked_wrong)
    aentries = _offloaded(entries)
    anamespaces = _offloaded(namespaces)
    awarm_up = _offloaded(warm_up)
    acompare_answers = _offloaded(compare_answers)

    @property
    def redis_link(self) -> RedisLink | None:
        """The Redis link entries are shared through (``redis``), or ``None``."""
        return None if self._stream is None else self._stream.link

    @property
    def vectors(self) -> Vectors:
        """The embedding side: the model, what it can read of a text, recent vectors."""
        return self._vectors

    # -- internals -------------------------------------------------------------------------

    @property
    def _catalog(self) -> Catalog:
        return self._derived.catalog

    @property
    def _index(self) -> ScopedIndex:
        return self._derived.index

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the cache in {self.directory} is closed")

    def _lookup_exact(self, request: CacheRequest, now: float) -> Decision | None:
        entry_id = self._store.find_exact(request.exact_key)
        if entry_id is None:
            return None
        entry = self._fetch(entry_id, now)
        if entry is None or entry.scope != request.scope.key:
            return None
        return self._serve(entry, 1.0, Reason.EXACT, now)

    @property
    def min_similarity(self) -> float:
        """The similarity floor in force (see :class:`semcache.decision.HitDecider`)."""
        return self._decider.min_similarity

    @property
    def min_confidence(self) -> float | None:
        """The probability the verifier must give in force; ``None`` without a verifier."""
        return self._decider.min_confidence

    def _serve(
        self,
        entry: Entry,
        score: float,
        reason: Reason,
        now: float,
        confidence: float | None = None,
    ) -> Decision:
        with self._lock:
            # Under the lock and only while the entry is catalogued, so a hit racing a delete
            # cannot leave statistics behind for an entry that is gone.
            if entry.entry_id in self._catalog:
                self._catalog.touch(entry.entry_id)
                try:
                    self._store.record_hit(entry, now)
                except _WRITE_FAILURES as exc:
                    # Statistics are best effort: a full or failing disk must not stop the cache
                    # from answering with what it already holds.
                    self._counters["hit_stats_failed"] += 1
                    if self._counters["hit_stats_failed"] == 1:
                        logger.warning("cannot record hit statistics (serving on): %s", exc)
        hit = Hit(
            entry_id=entry.entry_id,
            prompt=entry.prompt,
            response=entry.response,
            score=min(1.0, score),
            reason=reason,
            namespace=entry.namespace,
            created_at=entry.created_at,
            expires_at=entry.expires_at,
            confidence=confidence,
        )
        return Decision(
            hit=hit,
            reason=reason,
            score=hit.score,
            entry_id=entry.entry_id,
            confidence=confidence,
        )

    def _fetch(self, entry_id: int, now: float) -> Entry | None:
        """The live entry, repairing what points at a missing, corrupt or expired one."""
        try:
            entry = self._store.get(entry_id)
        except CorruptEntryError as exc:
            logger.error("removing corrupt entry %d: %s", entry_id, exc)
            with self._lock:
                self._counters["corrupt"] += 1
                self._delete_quietly(entry_id)
            return None
        if entry is None:
            with self._lock:
                self._forget([entry_id])
            return None
        if entry.expired(now):
            with self._lock:
                self._counters["expired"] += 1
                self._delete_quietly(entry_id)
            return None
        return entry

    def _delete_quietly(self, entry_id: int) -> None:
        """Delete an entry found unusable during a lookup; when the disk refuses, it is only
        forgotten here (it stays unusable, and goes at the next rebuild): a lookup never fails
        for want of a write."""
        try:
            self._store.delete_many([entry_id])
        except _WRITE_FAILURES as exc:
            logger.warning("cannot delete entry %d now: %s", entry_id, exc)
        self._forget([entry_id])

    def _commit(self, entries: Sequence[Entry]) -> list[Written]:
        """Write entries to the store and the derived state (the caller holds the lock)."""
        written = self._store.put_many(entries)
        self._derived.apply(
            added=[
                replace(entry, entry_id=result.entry_id, size=result.size)
                for entry, result in zip(entries, written, strict=True)
            ],
            # Also an entry superseded by a later one of the same batch (same scope and
            # prompt), which so never reaches the index.
            removed=[r.replaced_id for r in written if r.replaced_id is not None],
        )
        return written

    def _forget(self, entry_ids: Sequence[int]) -> None:
        """Drop ids from the derived state (the caller has deleted them from the store)."""
        self._derived.apply(removed=entry_ids)

    def _remove_expired(self, now: float) -> int:
        due = self._catalog.expired(now)
        if due:
            self._store.delete_many(due)
            self._forget(due)
            self._counters["expired"] += len(due)
        return len(due)

    def _enforce_bounds(self) -> None:
        max_entries, max_bytes = self.config.max_entries, self.config.max_bytes
        victims = self._catalog.over_bounds(max_entries, max_bytes)
        if victims:
            # Shared entries are one cache: what its bounds evict here goes everywhere.
            evicted = [e for v in victims if (e := self._stored(v)) is not None]
            self._store.delete_many(victims)
            self._forget(victims)
            self._counters["evicted"] += len(victims)
            for entry in evicted:
                self._publish_removal("evict", entry)


def _sequence(values: Any, name: str) -> Sequence[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidRequestError(f"{name} must be a list, got {type(values).__name__}", field=name)
    return values


def _prompt(prompt: Any, position: int) -> str:
    return check_prompt(prompt, f"prompts[{position}]")


def _put_event(entry: Entry) -> tuple[dict[str, Any], bytes]:
    """A stored entry as an event of the shared stream, and its vector's bytes."""
    event = {
        "op": "put",
        "prompt": entry.prompt,
        "response": entry.response,
        "namespace": entry.namespace,
        "scope": entry.scope,
        "exact_key": entry.exact_key,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "embedder": entry.embedder,
    }
    vector = b"" if entry.vector is None else entry.vector.astype(np.float32).tobytes()
    return event, vector


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when it is missing or unreadable."""
    try:
        loaded = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
