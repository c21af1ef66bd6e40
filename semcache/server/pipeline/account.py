"""Stage ``account``: what the upstream charged for the answer, on the key's limits, the
metrics and the budgets. It runs once the upstream connection is released, before the answer
is stored, and also when a stage after ``send`` failed (the upstream charges all the same)."""

from __future__ import annotations

from aiohttp import web

from semcache.server import accounting
from semcache.server.pipeline.exchange import Exchange
from semcache.tokens import count_text


async def account(x: Exchange) -> web.StreamResponse | None:
    if x.attempt is None or x.accounted or x.parsed is None:
        return None
    x.accounted = True
    accounting.account(
        x.state, x.attempt, x.parsed.model, x.received, x.tenant,
        dialect=x.dialect, estimate=_estimate(x),
    )  # fmt: skip
    if x.compressed is not None:
        accounting.count_compression_savings(
            x.state, x.parsed.model, x.compressed, x.received, x.dialect
        )
    return None


def _estimate(x: Exchange) -> tuple[int, int] | None:
    """What an answer without usage (a stream cut short, by either side) cost: the prompt and
    the text that came, by the tokenizer."""
    received = x.received
    if received is None or sum(x.dialect.usage(received)) > 0:
        return None
    return (
        x.dialect.prompt_tokens(x.outgoing),
        sum(count_text(t) for t in x.dialect.generated_texts(received)),
    )
