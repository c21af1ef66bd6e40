"""What an upstream answer cost: tokens per key, spend per upstream and model, the budget."""

from __future__ import annotations

import time
from typing import Any

from semcache.errors import BudgetExceededError
from semcache.openai_api import usage_tokens
from semcache.server.state import State
from semcache.upstream.router import Attempt


def account(
    state: State, attempt: Attempt, model: str, answer: dict[str, Any] | None, tenant: str
) -> None:
    """Settle the key's token reservation and add the answer's cost to metrics and budgets.

    ``answer`` is the complete response, or ``None`` when there is none (error, cut stream):
    the reservation then stands as estimated."""
    if answer is None:
        attempt.settle(None)
        return
    prompt, completion = usage_tokens(answer)
    if prompt + completion == 0:
        attempt.settle(None)
        return
    attempt.settle(prompt + completion)
    upstream, key = attempt.target.upstream.name, attempt.target.id
    metrics = state.metrics
    metrics.upstream_tokens.labels(upstream, key, "prompt").inc(prompt)
    metrics.upstream_tokens.labels(upstream, key, "completion").inc(completion)
    answered_by = answer.get("model") if isinstance(answer.get("model"), str) else model
    cost = state.prices.cost(model, prompt, completion)
    metrics.upstream_cost.labels(upstream, answered_by).inc(cost)
    if state.ledger is None:
        return
    for warning in state.ledger.record(tenant, cost):
        scope = "global" if warning.scope == "global" else "tenant"
        metrics.budget_warnings.labels(scope, warning.period, str(warning.fraction)).inc()
    for period in ("day", "month"):
        metrics.budget_spend.labels(period).set(state.ledger.spent("global", period))


def admit(state: State, tenant: str, model: str) -> str | None:
    """The model to send the request to under the budgets: ``None`` to keep ``model``.

    Raises:
        BudgetExceededError: a cap is reached and the budget says to refuse.
    """
    if state.ledger is None:
        return None
    admission = state.ledger.admit(tenant, model)
    if admission.exceeded is None:
        return None
    if admission.refused:
        state.metrics.budget_actions.labels("rejected").inc()
        raise BudgetExceededError(
            admission.exceeded.message(),
            retry_after_s=max(1.0, admission.exceeded.resets_at - time.time()),
        )
    state.metrics.budget_actions.labels("downgraded").inc()
    return admission.model if admission.model != model else None
