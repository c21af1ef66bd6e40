"""Stream mode: replay requests through the real sidecar over HTTP, from an empty cache.

The sidecar runs in this process on 127.0.0.1 in front of a simulated upstream (also a real
HTTP server here). The upstream answers every request at once with a text that names the
request it answers (``[bench #k]``), so when the sidecar serves a stored answer the harness knows
whose answer it was, and whether that was right: the same label (cluster, conversation turn) for
labelled data, the same text after normalisation for unlabelled data (otherwise the hit is
counted as unverified, probably wrong).

The answer's words depend on the request's label (its normalised text when unlabelled), each
label drawing from words no other label uses: two requests that share a label get answers that
agree in meaning, others do not. That is what a sidecar under ``max_error_rate`` learns from (a
miss's candidate is labelled by comparing its stored answer with the upstream's), so a bounded
replay learns from the same truth the harness judges by. Wrong hits are also marked wrong
through the admin API, as a user who flags a bad answer would: the entry is never served again
(a mark is no label for the bound; see :meth:`semcache.SemanticCache.mark_wrong`).

Upstream latency is simulated, not slept: each request gets a latency drawn from a log-normal
distribution (seeded), which is added to the measured time of every miss. Usage is counted with
a real tokenizer: the prompt's tokens, and an answer whose length is drawn per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import tempfile
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp import web
from tqdm import tqdm

from semcache.bench import gptcache_baseline
from semcache.bench.datasets import StreamItem, same_answer, same_reference, scope_of
from semcache.bench.fixed_threshold import FixedThresholds, replay_fixed
from semcache.bench.options import bar_off
from semcache.cache import SemanticCache
from semcache.config import CacheConfig
from semcache.embedding import Embedder
from semcache.keys import fingerprint, normalize_prompt
from semcache.pricing import Price
from semcache.server import create_app
from semcache.settings import ServerConfig
from semcache.tokens import count_messages, count_text

_SOURCE = re.compile(r"\[bench #(\d+)\]")
_WORD = re.compile(r"[a-z]{3,}")
_ADMIN_TOKEN = "bench-admin"
_WORDS_PER_LABEL = 12


@dataclass
class Simulation:
    seed: int = 0
    latency_median_ms: float = 800.0
    latency_sigma: float = 0.6
    answer_median_tokens: float = 120.0
    price: Price = field(default_factory=lambda: Price(0.00015, 0.0006))  # gpt-4o-mini list


@dataclass
class StreamResult:
    """Outcomes of one cache over the stream, in stream order."""

    name: str
    hits: list[bool]
    right: list[bool]
    wrong: list[bool]  # labelled data: another label's answer
    unverified: list[bool]  # unlabelled data: another text's answer
    latency_ms: list[float]
    tokens_saved: int = 0
    dollars_saved: float = 0.0
    bounded: list[float | None] = field(default_factory=list)  # the bound's threshold after each
    labelled: float = 0.0  # under a bound: the weight of the labels it learnt from
    kinds: list[str] = field(default_factory=list)  # each request's StreamItem.kind
    # Wrong by the labels, but the data gives the query the answer that was served.
    wrong_same_reference: list[bool] = field(default_factory=list)


class SimulatedUpstream:
    def __init__(self, simulation: Simulation, items: Sequence[StreamItem]) -> None:
        self.simulation = simulation
        count = len(items)
        self._vocabulary = _vocabularies(items, simulation.seed)
        self._label_of = [_label_key(item) for item in items]
        rng = np.random.default_rng(simulation.seed)
        self.latency_ms = rng.lognormal(
            np.log(simulation.latency_median_ms), simulation.latency_sigma, count
        )
        self.answer_tokens = np.maximum(
            5, rng.lognormal(np.log(simulation.answer_median_tokens), 0.5, count).astype(int)
        )
        self.calls = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    def usage(self, item: int, body: dict[str, Any]) -> tuple[int, int]:
        """(prompt, completion) tokens the upstream bills for this request."""
        return count_messages(body.get("messages") or []), count_text(self.answer(item))

    def cost(self, item: int, body: dict[str, Any]) -> float:
        prompt, completion = self.usage(item, body)
        price = self.simulation.price
        return (prompt * price.input_per_1k + completion * price.output_per_1k) / 1000

    def answer(self, item: int) -> str:
        """``[bench #item]`` and words of the item's label only: answers to one label agree."""
        words = self._vocabulary[self._label_of[item]]
        body = [words[i % len(words)] for i in range(int(self.answer_tokens[item]))]
        return f"[bench #{item}] " + " ".join(body)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        item = int(request.headers["X-Bench-Item"])
        self.calls += 1
        answer = self.answer(item)
        prompt_tokens, completion_tokens = self.usage(item, body)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return web.json_response(
            {
                "id": f"chatcmpl-bench-{item}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _label_key(item: StreamItem) -> Hashable:
    return item.label if item.label is not None else ("text", normalize_prompt(item.text))


def _vocabularies(items: Sequence[StreamItem], seed: int) -> dict[Hashable, list[str]]:
    """Words for each label's answers, drawn from the stream's own words without
    replacement: no two labels share a word (a shared pool's words are reused only once it
    runs out)."""
    pool = sorted({w for item in items for w in _WORD.findall(item.text.lower())})
    random.Random(seed).shuffle(pool)
    labels = list(dict.fromkeys(_label_key(item) for item in items))
    pool = pool or ["answer"]
    return {
        label: [pool[(k * _WORDS_PER_LABEL + i) % len(pool)] for i in range(_WORDS_PER_LABEL)]
        for k, label in enumerate(labels)
    }


def _record(
    result: StreamResult,
    upstream: SimulatedUpstream,
    item_id: int,
    item: StreamItem,
    judged: tuple[bool, bool, bool] | None,
    elapsed_ms: float,
    source: StreamItem | None = None,
) -> None:
    """Add one request's outcome: ``judged`` is (right, wrong, unverified) for a hit on
    ``source``'s answer, None for a miss, which pays the simulated upstream latency."""
    hit = judged is not None
    right, wrong, unverified = judged or (False, False, False)
    if hit:
        # Saved: what this request would have cost upstream.
        result.tokens_saved += sum(upstream.usage(item_id, item.body))
        result.dollars_saved += upstream.cost(item_id, item.body)
    else:
        elapsed_ms += float(upstream.latency_ms[item_id])
    result.hits.append(hit)
    result.right.append(right)
    result.wrong.append(wrong)
    result.unverified.append(unverified)
    result.latency_ms.append(elapsed_ms)
    result.kinds.append(item.kind)
    result.wrong_same_reference.append(
        wrong and source is not None and same_reference(item, source)
    )


def shuffled(
    items: Sequence[StreamItem], seed: int, limit: int | None
) -> list[tuple[int, StreamItem]]:
    order = list(enumerate(items))
    random.Random(seed).shuffle(order)
    return order[:limit] if limit else order


async def _replay_sidecar(
    order: Sequence[tuple[int, StreamItem]],
    items: Sequence[StreamItem],
    upstream: SimulatedUpstream,
    cache: SemanticCache,
    progress: bool,
    name: str = "semcache",
    history_match: str = "exact",
) -> StreamResult:
    """The stream through the sidecar; under the cache's ``max_error_rate``, each wrong hit is
    also marked wrong through the admin API (a user flagging it)."""
    config = ServerConfig(
        upstream=upstream.url, cache_dir=cache.directory, lookup_batch_wait_ms=0,
        admin_token=_ADMIN_TOKEN, health_check_interval_s=0, history_match=history_match,
    )  # fmt: skip
    flag_wrong = cache.error_bound is not None
    runner = web.AppRunner(create_app(config, cache=cache))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    url = base + "/v1/chat/completions"
    result = StreamResult(name, [], [], [], [], [])
    try:
        async with aiohttp.ClientSession() as session:
            for item_id, item in tqdm(order, disable=bar_off(progress), desc="stream", unit="req"):
                started = time.perf_counter()
                async with session.post(
                    url,
                    data=orjson.dumps(item.body),
                    headers={
                        "Authorization": "Bearer sk-bench",
                        "Content-Type": "application/json",
                        "X-Bench-Item": str(item_id),
                    },
                ) as response:
                    answer = await response.json()
                    outcome = response.headers.get("X-Semcache", "error")
                    entry = response.headers.get("X-Semcache-Entry")
                elapsed_ms = (time.perf_counter() - started) * 1000
                judged, source = None, None
                if outcome == "hit":
                    content = answer["choices"][0]["message"]["content"]
                    source = items[int(_SOURCE.search(content).group(1))]  # type: ignore[union-attr]
                    judged = same_answer(item, source)
                    if flag_wrong and judged[1] and entry is not None:
                        await _mark_wrong(session, base, entry)
                _record(result, upstream, item_id, item, judged, elapsed_ms, source)
                result.bounded.append(_bound_state(cache))
    finally:
        await runner.cleanup()  # the labels still under way are drained first
    if cache.error_bound is not None:
        result.labelled = sum(t["labelled"] for t in cache.error_bound.describe().values())
    return result


async def _mark_wrong(session: aiohttp.ClientSession, base: str, entry: str) -> None:
    async with session.post(
        f"{base}/admin/entries/{entry}/wrong",
        headers={"Authorization": f"Bearer {_ADMIN_TOKEN}"},
    ) as response:
        response.raise_for_status()


def _bound_state(cache: SemanticCache) -> float | None:
    """The score the error bound asks of a hit now (the bench has one namespace; ``None``
    without a bound, or while it serves nothing)."""
    if cache.error_bound is None:
        return None
    learnt = [t["threshold"] for t in cache.error_bound.describe().values()]
    learnt = [t for t in learnt if t is not None]
    return float(min(learnt)) if learnt else None


def _exact_key(item: StreamItem) -> str:
    return fingerprint(scope_of(item)) + normalize_prompt(item.text)


def _replay_exact(
    order: Sequence[tuple[int, StreamItem]], upstream: SimulatedUpstream
) -> StreamResult:
    stored: dict[str, StreamItem] = {}
    result = StreamResult("exact match", [], [], [], [], [])
    for item_id, item in order:
        key = _exact_key(item)
        source = stored.get(key)
        if source is None:
            stored[key] = item
        judged = None if source is None else same_answer(item, source)
        _record(result, upstream, item_id, item, judged, 0.0, source)
    return result


def _replay_none(
    order: Sequence[tuple[int, StreamItem]], upstream: SimulatedUpstream
) -> StreamResult:
    n = len(order)
    return StreamResult(
        "no cache", [False] * n, [False] * n, [False] * n, [False] * n,
        [float(upstream.latency_ms[i]) for i, _ in order], kinds=[item.kind for _, item in order],
        wrong_same_reference=[False] * n,
    )  # fmt: skip


def _replay_gptcache(
    order: Sequence[tuple[int, StreamItem]],
    items: Sequence[StreamItem],
    upstream: SimulatedUpstream,
    model: str | None,
    progress: bool,
) -> StreamResult:
    baseline = gptcache_baseline.GPTCacheBaseline(model)
    result = StreamResult("GPTCache (default threshold)", [], [], [], [], [])
    try:
        for item_id, item in tqdm(order, disable=bar_off(progress), desc="GPTCache", unit="req"):
            started = time.perf_counter()
            answer = baseline.get(item.text)
            elapsed_ms = (time.perf_counter() - started) * 1000
            judged, source = None, None
            if answer is not None:
                source = items[int(answer)]
                judged = same_answer(item, source)
            else:
                baseline.put_many([item.text], [str(item_id)])
            _record(result, upstream, item_id, item, judged, elapsed_ms, source)
    finally:
        baseline.close()
    return result


def hittable(order: Sequence[tuple[int, StreamItem]]) -> list[bool]:
    """Whether an earlier request could have given each request its right answer."""
    seen: set[Hashable] = set()
    out = []
    for _, item in order:
        key = item.label if item.label is not None else normalize_prompt(item.text)
        out.append(key in seen)
        seen.add(key)
    return out


def run(
    items: Sequence[StreamItem],
    *,
    simulation: Simulation,
    limit: int | None,
    embedder: Embedder | None,
    min_similarity: float | None,
    model: str | None = None,
    progress: bool = True,
    min_confidence: float | None = None,
    max_error_rate: float | None = None,
    history_match: str = "exact",
    gptcache: bool = True,
) -> tuple[list[StreamResult], list[bool], float, list[str], FixedThresholds | None]:
    """The results of semcache, exact match, no cache (and GPTCache), which requests could
    have hit, what the stream costs with no cache, and notes. With ``max_error_rate``, a second
    semcache replay runs under that bound, last in the list, and fixed thresholds are replayed
    to compare it with (the last element)."""
    order = shuffled(items, simulation.seed, limit)
    upstream = SimulatedUpstream(simulation, items)
    notes: list[str] = []

    async def replay(config: CacheConfig, name: str) -> StreamResult:
        await upstream.start()
        try:
            with tempfile.TemporaryDirectory(prefix="semcache-bench-") as directory:
                cache = SemanticCache(directory, embedder=embedder, config=config)
                try:
                    return await _replay_sidecar(
                        order, items, upstream, cache, progress, name, history_match
                    )
                finally:
                    cache.close()
        finally:
            await upstream.stop()

    config = CacheConfig(model=model, min_similarity=min_similarity, min_confidence=min_confidence)
    results = [
        asyncio.run(replay(config, "semcache")),
        _replay_exact(order, upstream),
        _replay_none(order, upstream),
    ]
    total = sum(upstream.cost(i, item.body) for i, item in order)
    if gptcache and gptcache_baseline.available():
        results.append(_replay_gptcache(order, items, upstream, model, progress))
    else:
        notes.append(gptcache_baseline.skipped(gptcache))
    fixed = None
    if max_error_rate is not None:
        bounded = dataclasses.replace(config, max_error_rate=max_error_rate)
        results.append(asyncio.run(replay(bounded, bounded_name(max_error_rate))))
        fixed = replay_fixed(
            order, items, config, max_error_rate, embedder=embedder, progress=progress
        )
    return results, hittable(order), total, notes, fixed


def bounded_name(max_error_rate: float) -> str:
    return f"semcache, max_error_rate {max_error_rate:g}"
