"""What an upstream answer cost: tokens per key, spend per upstream and model, the budget."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from semcache.budgets import PERIODS, SpendLedger, scope_kind
from semcache.compression import Compressed
from semcache.dialects import Dialect
from semcache.errors import BudgetExceededError
from semcache.metrics import Metrics
from semcache.server.state import State
from semcache.upstream.router import Attempt


def account(
    state: State,
    attempt: Attempt,
    model: str,
    answer: dict[str, Any] | None,
    tenant: str,
    *,
    dialect: Dialect,
    estimate: tuple[int, int] | None = None,
    payers: Sequence[tuple[str, float]] = (),
) -> None:
    """Settle the key's token reservation and add what the upstream charges for the answer
    to metrics and budgets.

    ``answer`` is whatever the upstream answered with status 200, whatever its finish reason
    (a tool call or a filtered answer is paid for like any other), or ``None`` (an error).
    Its ``usage`` is the bill; without one (a stream cut before its usage chunk), ``estimate``
    (prompt and completion tokens counted by the tokenizer) is billed instead and the key's
    reservation stands as it was made. ``dialect`` reads the usage of its API's answers,
    prompt tokens read from the provider's prompt cache included (billed at their price).
    ``payers`` share the cost of a call made for several tenants (a merged call), each in
    proportion to its weight; by default ``tenant`` pays it all."""
    prompt, completion = dialect.usage(answer)
    if prompt + completion > 0:
        attempt.settle(prompt + completion)
    else:
        attempt.settle(None)
        if estimate is None or sum(estimate) == 0:
            return
        prompt, completion = estimate
    bill(
        state, attempt.target.upstream.name, attempt.target.id, model, answer,
        (prompt, completion), dialect=dialect, payers=payers or [(tenant, 1.0)],
    )  # fmt: skip


def bill(
    state: State,
    upstream: str,
    key: str,
    model: str,
    answer: dict[str, Any] | None,
    usage: tuple[int, int],
    *,
    dialect: Dialect,
    payers: Sequence[tuple[str, float]],
    discount: float = 1.0,
) -> float:
    """Add what an answer costs (``usage``: its prompt and completion tokens) to the metrics
    and to the budgets of ``payers`` (tenants, each paying in proportion to its weight);
    ``discount`` is the share of the list price charged (a provider's batch job: 0.5).
    Returns the cost."""
    prompt, completion = usage
    cached = min(dialect.cached_prompt_tokens(answer), prompt)
    answer = answer or {}
    metrics = state.metrics
    metrics.upstream_tokens.labels(upstream, key, "prompt").inc(prompt)
    metrics.upstream_tokens.labels(upstream, key, "completion").inc(completion)
    if cached:
        metrics.upstream_tokens.labels(upstream, key, "cached_prompt").inc(cached)
        state.compression.totals.cached_prompt_tokens += cached
    answered_by = answer.get("model") if isinstance(answer.get("model"), str) else model
    cost = state.prices.cost(model, prompt, completion, cached) * discount
    metrics.upstream_cost.labels(upstream, answered_by).inc(cost)
    if state.ledger is None:
        return cost
    whole = sum(weight for _, weight in payers)
    for payer, weight in payers:
        share = cost * weight / whole if whole > 0 else cost / len(payers)
        warnings = state.ledger.record(payer, share)
        for warning in warnings:
            metrics.budget_warnings.labels(
                scope_kind(warning.scope), warning.period, str(warning.fraction)
            ).inc()
        if warnings and state.budget_webhook is not None:
            state.budget_webhook.send(warnings)
    return cost


def gauge_budgets(ledger: SpendLedger, metrics: Metrics) -> None:
    """Export the spend of the overall scope and of the business lines, and their caps: read
    once here, then kept by the ledger as it adds each answer's cost (a scrape reads nothing,
    and a new period shows 0 at once)."""
    for scope, caps in ledger.capped_scopes():
        for period in PERIODS:
            ledger.spent(scope, period)
            metrics.budget_spend.labels(scope, period).set_function(
                functools.partial(ledger.last_seen, scope, period)
            )
            cap = caps.of(period)
            if cap is not None:
                metrics.budget_cap.labels(scope, period).set(cap)


def admit(state: State, tenant: str, model: str, *, can_downgrade: bool = True) -> str | None:
    """The model to send the request to under the budgets: ``None`` to keep ``model``.

    A request that cannot change model (``can_downgrade`` false: an embedding, a file) is
    sent as it is when the budget says to downgrade, and refused when it says to refuse.

    Raises:
        BudgetExceededError: a cap is reached and the budget says to refuse.
    """
    if state.ledger is None:
        return None
    admission = state.ledger.admit(tenant, model)
    if admission.exceeded is None or (not can_downgrade and not admission.refused):
        return None
    if admission.refused:
        state.metrics.budget_actions.labels("rejected").inc()
        raise BudgetExceededError(
            admission.exceeded.message(),
            retry_after_s=max(1.0, admission.exceeded.resets_at - time.time()),
        )
    if admission.model == model:
        return None
    state.metrics.budget_actions.labels("downgraded").inc()
    return admission.model


def cheaper_model(state: State, tenant: str, model: str) -> str | None:
    """The model a spent budget sends this request to instead, decided before the lookup so
    that the cache is searched where the answer will be stored; ``None`` when the budget leaves
    the model alone (or refuses: hits are served all the same, misses are refused later)."""
    if state.ledger is None:
        return None
    admission = state.ledger.admit(tenant, model)
    if admission.exceeded is None or admission.refused or admission.model == model:
        return None
    state.metrics.budget_actions.labels("downgraded").inc()
    return admission.model


def count_compression_savings(
    state: State,
    model: str,
    compressed: Compressed,
    answer: dict[str, Any] | None,
    dialect: Dialect,
) -> float:
    """What the tokens compression removed would have cost: at the input price, discounted as
    the provider discounted this answer's prompt (the removed tokens would have been read from
    its cache in the same proportion as the ones sent)."""
    removed = compressed.removed_tokens
    if removed <= 0:
        return 0.0
    prompt, _ = dialect.usage(answer)
    cached_share = min(dialect.cached_prompt_tokens(answer), prompt) / prompt if prompt else 0.0
    cached = round(removed * cached_share)
    saved = state.prices.cost(model, removed, 0, cached)
    state.metrics.compression_saved.labels(compressed.requested.value).inc(saved)
    state.compression.totals.saved_usd += saved
    return saved
