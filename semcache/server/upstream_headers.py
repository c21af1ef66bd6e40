"""The upstream's response headers a client sees, and what semcache adds about the call."""

from __future__ import annotations

from semcache.upstream.router import Attempt

# Upstream response headers worth passing on (rate limits, request ids, processing time).
_PASSED_PREFIXES = ("x-ratelimit-", "openai-", "x-request-id", "retry-after", "azureml-", "apim-")


def passed_headers(attempt: Attempt) -> dict[str, str]:
    """Upstream headers worth passing on; rate-limit headers only when they describe the
    caller's own key, not one of the pool's."""
    own_key = attempt.target.key is None
    passed = {
        name: value
        for name, value in attempt.response.headers.items()
        if name.lower().startswith(_PASSED_PREFIXES)
        and (own_key or not name.lower().startswith(("x-ratelimit-", "retry-after")))
    }
    passed["X-Semcache-Upstream"] = attempt.target.upstream.name
    if attempt.retries:
        passed["X-Semcache-Retries"] = str(attempt.retries)
    return passed
