"""The one exception tree of semcache.

    SemcacheError
     ├── InvalidRequestError (ValueError)  the caller passed something unusable: an empty prompt,
     │                                     a response that is not JSON, a bad namespace or option
     ├── ConfigError (ValueError)          a setting is out of range or unknown
     ├── ModelNotFoundError                the embedding model cannot be found on this machine
     ├── CacheLockedError                  another process has the cache directory open
     ├── StoreError                        the on-disk store cannot be used
     │    └── CorruptEntryError            one stored record cannot be decoded
     ├── UpstreamError                     the LLM API could not be reached or did not answer
     │    ├── UpstreamUnavailableError     connection refused, reset, DNS failure (HTTP 502)
     │    ├── UpstreamTimeoutError         no answer within the timeout (HTTP 504)
     │    ├── InvalidAnswerError           an answer that is not a valid response (HTTP 502)
     │    └── UpstreamsDownError           every upstream's breaker is open (HTTP 503)
     └── CapacityError                     semcache itself declines to send now (HTTP 429)
          ├── QueueFullError               every key is at its limit and the queue is full
          ├── QueueTimeoutError            the request waited its maximum in the queue
          └── BudgetExceededError          a daily or monthly spend cap is reached

Errors from the libraries underneath (diskcache, FAISS, sentence-transformers) are translated
where they are raised, with the original kept as ``__cause__``.
"""

from __future__ import annotations


class SemcacheError(Exception):
    """Base class of every error semcache raises on purpose."""


class InvalidRequestError(SemcacheError, ValueError):
    """Bad input from the caller.

    ``field`` names the offending argument or request field, so an HTTP layer can say
    which one to fix.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(SemcacheError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class ModelNotFoundError(SemcacheError):
    """The embedding model could not be resolved from local files."""


class CacheLockedError(SemcacheError):
    """The cache directory is already open in another process."""


class StoreError(SemcacheError):
    """The entry store failed or holds data this version cannot read."""


class CorruptEntryError(StoreError):
    """A single stored record failed to decode; the rest of the store is unaffected."""

    def __init__(self, message: str, *, entry_id: int) -> None:
        super().__init__(message)
        self.entry_id = entry_id


class UpstreamError(SemcacheError):
    """The upstream API failed before it gave an HTTP answer."""


class UpstreamUnavailableError(UpstreamError):
    """The upstream could not be reached or dropped the connection."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer, or stopped streaming, within the timeout."""


class InvalidAnswerError(UpstreamError):
    """The upstream answered 200 with something that is not a response of the API it speaks:
    relayed as an error and never stored."""


class UpstreamsDownError(UpstreamError):
    """Every upstream that could serve the request has its breaker open; ``retry_after_s``
    says when the first one lets a probe through."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CapacityError(SemcacheError):
    """Semcache will not send the request now; ``retry_after_s`` says when trying again may
    succeed (``None``: not before the situation changes)."""

    code = "capacity"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(CapacityError):
    """Every key is at its limit and the queue holds its maximum of waiting requests."""

    code = "queue_full"


class QueueTimeoutError(CapacityError):
    """The request waited the maximum time in the queue without a key coming free."""

    code = "queue_timeout"


class BudgetExceededError(CapacityError):
    """A spend cap is reached and the budget says to refuse."""

    code = "budget_exceeded"
