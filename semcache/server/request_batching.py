"""Request batching in the sidecar: misses that may share a call wait in a window (see
:mod:`semcache.batching.window`), then go upstream as one merged call whose answer is split
item by item (see :mod:`semcache.batching.merging`). The merged call goes through the router
like any other (keys, limits, queue, retries) and is billed once, its cost shared by the
members' tenants in proportion to their tokens."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from semcache.batching import PROTOCOLS, Cause, Member, Windows, new_ids, shares
from semcache.batching import split as split_answer
from semcache.dialects import Dialect
from semcache.keys import CacheRequest
from semcache.server import accounting
from semcache.server.upstream_headers import passed_headers
from semcache.tokens import count_text

if TYPE_CHECKING:
    from semcache.server.state import State

logger = logging.getLogger("semcache.server")

# What one item adds to a merged call's answer (its id, the quote of its input, the JSON
# around them), in tokens; and what an output token weighs against an input one when the
# model has no price (the usual ratio in providers' price lists).
ANSWER_OVERHEAD_TOKENS = 20
OUTPUT_WEIGHT = 4


@dataclass(frozen=True, eq=False)
class Waiting:
    """A miss waiting in a batching window."""

    member: Member
    dialect: Dialect
    path: str
    headers: Mapping[str, str]
    model: str
    tenant: str
    priority: int
    prompt_tokens: int  # what it would send alone
    request: CacheRequest | None  # where its answer is stored (None: not stored)
    since: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Merged:
    """An item answered by a merged call: its own answer, and what to say of the call."""

    answer: dict[str, Any]
    batch: str  # "<batch id>/<size>"
    headers: dict[str, str]
    stored: bool  # already stored under the item's request, with the batch's other answers


@dataclass(frozen=True)
class Fallback:
    """An item to send alone: ``cause`` why a merged call did not answer it; or, with no
    ``batch``, ``reason`` why it was not merged (``alone``, ``no_saving``)."""

    batch: str | None
    cause: Cause | None = None
    reason: str = "alone"


Outcome = Merged | Fallback


@dataclass
class BatchTotals:
    """Since start, for /stats."""

    calls: int = 0
    items: int = 0
    merged: int = 0
    fallbacks: int = 0
    alone: int = 0
    tokens_saved: int = 0
    saved_usd: float = 0.0

    def describe(self) -> dict[str, float]:
        return {
            "merged_calls": self.calls,
            "items": self.items,
            "merged_items": self.merged,
            "fallback_items": self.fallbacks,
            "alone": self.alone,
            "calls_per_item": (self.calls + self.fallbacks + self.alone) / self.items
            if self.items
            else 0.0,
            "prompt_tokens_saved": self.tokens_saved,
            "saved_usd": round(self.saved_usd, 6),
        }


@dataclass
class RequestBatching:
    windows: Windows[Waiting, Outcome]
    totals: BatchTotals = field(default_factory=BatchTotals)


def request_batching(
    state_of: Callable[[], State], *, window_s: float, max_items: int
) -> RequestBatching:
    """The sidecar's batching windows; ``state_of()`` is the application's state, read when a
    batch closes."""

    async def send(items: Sequence[Waiting]) -> Sequence[Outcome]:
        return await send_merged(state_of(), items)

    return RequestBatching(Windows(send, window_s=window_s, max_items=max_items))


async def send_merged(state: State, items: Sequence[Waiting]) -> list[Outcome]:
    """One call for every item of a closed batch; each item's outcome, in order."""
    metrics, totals = state.metrics, state.batching.totals
    now = time.monotonic()
    for item in items:
        metrics.batch_wait.observe(now - item.since)
    totals.items += len(items)
    if len(items) == 1:
        totals.alone += 1
        metrics.batch_items.labels("alone").inc()
        return [Fallback(None)]
    size = len(items)
    batch = f"b-{secrets.token_hex(6)}/{size}"
    ids = new_ids(size)
    members = [item.member for item in items]
    prompts = [m.prompt for m in members]
    first = items[0]
    dialect = first.dialect
    protocol = PROTOCOLS[dialect.name]
    body = protocol.merged_request(members, ids)
    merged_prompt = dialect.prompt_tokens(body)  # counted once: the call reserves it too
    if not _worth_merging(state, items, merged_prompt):
        totals.alone += size
        metrics.batch_items.labels("alone").inc(size)
        return [Fallback(None, reason="no_saving")] * size
    metrics.batch_size.observe(size)
    totals.calls += 1
    answer: dict[str, Any] | None = None
    headers: dict[str, str] = {}
    try:
        async with state.router.send(
            "POST",
            first.path,
            headers=first.headers,
            body=orjson.dumps(body),
            model=first.model,
            tokens=merged_prompt + dialect.completion_allowance(body),  # one choice
            priority=min(item.priority for item in items),
            buffered=True,
            api=dialect.api,
        ) as attempt:
            data = await attempt.response.read()
            if attempt.response.status == 200:
                answer = _json_object(data)
                if not dialect.valid_answer(answer):
                    answer = None
            headers = passed_headers(attempt)
            split = split_answer(protocol.payload(answer), ids, prompts, limit=first.member.limit)
            usages = _member_usages(dialect, answer, items, ids, split.answers)
            _bill(state, attempt, first.model, answer, items, usages, dialect)
    except Exception as exc:  # the items go alone, and meet the error there if it persists
        logger.warning("a merged call of %d requests failed (%s); sending them alone", size, exc)
        split = split_answer(Cause.UPSTREAM_ERROR, ids, prompts)
        usages = [(0, 0)] * size
    if split.answers:
        _count_savings(state, first.model, answer, items, ids, split.answers)
        metrics.batch_calls.labels("answered").inc()
    else:
        metrics.batch_calls.labels("failed").inc()
    answers: dict[int, dict[str, Any]] = {}
    for position, (item_id, usage) in enumerate(zip(ids, usages, strict=True)):
        text = split.answers.get(item_id)
        if text is not None and answer is not None:
            mine = protocol.member_answer(answer, text, *usage)
            if dialect.valid_answer(mine) and dialect.finished_normally(mine):
                answers[position] = mine
    stored = await _store(state, items, answers)
    outcomes: list[Outcome] = []
    for position, item_id in enumerate(ids):
        if position in answers:
            metrics.batch_items.labels("merged").inc()
            totals.merged += 1
            outcomes.append(Merged(answers[position], batch, headers, stored))
        else:
            cause = split.failed.get(item_id, Cause.MALFORMED)
            metrics.batch_items.labels("fallback").inc()
            metrics.batch_fallbacks.labels(cause.value).inc()
            totals.fallbacks += 1
            outcomes.append(Fallback(batch, cause))
    return outcomes


async def _store(state: State, items: Sequence[Waiting], answers: dict[int, Any]) -> bool:
    """The batch's answers stored in one write (one at a time, the last member would wait
    for all the others' writes); False when that failed (each member then stores its own)."""
    stored = [(items[i].request, answer) for i, answer in answers.items()]
    requests = [request for request, _ in stored if request is not None]
    if not requests:
        return True
    try:
        await state.cache.astore_many(
            requests, [answer for request, answer in stored if request is not None]
        )
    except Exception:
        logger.exception("storing a merged call's answers together failed; storing them alone")
        return False
    return True


def _worth_merging(state: State, items: Sequence[Waiting], merged_prompt: int) -> bool:
    """Whether one merged call costs less than its items alone: the shared prefix sent once
    must outweigh the instructions, the JSON around each item and the longer answer. When the
    keys are saturated, requests per minute are what is short, and merging always pays."""
    model = items[0].model
    if state.router.backlogged(model):
        return True
    alone = sum(item.prompt_tokens for item in items)
    extra_out = len(items) * ANSWER_OVERHEAD_TOKENS
    price = state.prices.price(model)
    if price.input_per_1k > 0:
        return merged_prompt * price.input_per_1k + extra_out * price.output_per_1k < (
            alone * price.input_per_1k
        )
    return merged_prompt + OUTPUT_WEIGHT * extra_out < alone


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _member_usages(
    dialect: Dialect,
    answer: dict[str, Any] | None,
    items: Sequence[Waiting],
    ids: Sequence[str],
    answers: Mapping[str, str],
) -> list[tuple[int, int]]:
    """The merged call's usage split across its items: prompt tokens in proportion to what
    each would have sent alone, completion tokens to the length of each one's answer."""
    prompt, completion = dialect.usage(answer)
    prompts = shares(prompt, [item.prompt_tokens for item in items])
    written = [count_text(answers[i]) if i in answers else 0 for i in ids]
    completions = shares(completion, written)
    return list(zip(prompts, completions, strict=True))


def _bill(
    state: State,
    attempt: Any,
    model: str,
    answer: dict[str, Any] | None,
    items: Sequence[Waiting],
    usages: Sequence[tuple[int, int]],
    dialect: Dialect,
) -> None:
    """The merged call on the key's limits and the metrics once; its cost on each member's
    tenant, in proportion to the cost of its share of the usage."""
    weights = [state.prices.cost(model, p, c) for p, c in usages]
    if not any(weights):
        weights = [float(item.prompt_tokens) for item in items]
    accounting.account(
        state, attempt, model, answer, items[0].tenant, dialect=dialect,
        payers=[(item.tenant, weight) for item, weight in zip(items, weights, strict=True)],
    )  # fmt: skip


def _count_savings(
    state: State,
    model: str,
    answer: dict[str, Any] | None,
    items: Sequence[Waiting],
    ids: Sequence[str],
    answers: Mapping[str, str],
) -> None:
    """Prompt tokens not sent: what the answered items would have sent alone, less what the
    merged call sent (items sent again pay for themselves, so they count for nothing)."""
    sent, _ = items[0].dialect.usage(answer)
    alone = sum(item.prompt_tokens for item, i in zip(items, ids, strict=True) if i in answers)
    saved = alone - sent
    totals = state.batching.totals
    totals.tokens_saved += saved
    usd = state.prices.cost(model, abs(saved), 0) * (1 if saved >= 0 else -1)
    totals.saved_usd += usd
    if saved > 0:
        state.metrics.batch_tokens_saved.inc(saved)
        state.metrics.batch_saved.inc(usd)
