"""Every error the sidecar sends, in OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model", "code": null}}

One middleware renders them all, so a client library that understands OpenAI's errors
understands the sidecar's too.
"""

from __future__ import annotations

import logging
import math

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from semcache.errors import (
    BudgetExceededError,
    CapacityError,
    InvalidAnswerError,
    InvalidRequestError,
    UpstreamError,
    UpstreamsDownError,
    UpstreamTimeoutError,
)
from semcache.server.state import STATE

logger = logging.getLogger("semcache.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    408: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "upstream_error",
    504: "upstream_timeout",
}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    error_type: str | None = None,
) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": error_type or _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    # Every answer says what semcache did with the request; an error is neither hit nor miss.
    return web.json_response(
        body, status=status, headers={"X-Semcache": "error", **(headers or {})}
    )


# Of an HTTPException's headers, those that mean something in an error answer (its own
# Content-Type would clash with the JSON body).
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413,
            f"the request body is larger than the sidecar's limit of "
            f"{request.app[STATE].config.max_body_bytes} bytes (setting max_body_bytes)",
            code="request_too_large",
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
        message = (
            exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
        )
        return error_response(exc.status, message, headers=kept)
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # A body aiohttp could not read: a bad Content-Encoding, a broken chunked encoding.
        response = error_response(400, f"the request body cannot be read: {exc}".strip())
        response.force_close()  # what is left of the body on the socket is unreadable too
        return response
    except InvalidRequestError as exc:
        return error_response(400, str(exc), param=exc.field, code="invalid_request")
    except CapacityError as exc:
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        response = error_response(429, str(exc), code=exc.code, headers=headers)
        if isinstance(exc, BudgetExceededError):
            response = error_response(
                429, str(exc), code=exc.code, headers=headers, error_type="insufficient_quota"
            )
        return response
    except UpstreamTimeoutError as exc:
        return error_response(504, str(exc), code="upstream_timeout")
    except InvalidAnswerError as exc:
        return error_response(502, str(exc), code="invalid_upstream_answer")
    except UpstreamsDownError as exc:
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return error_response(
            503, str(exc), code="upstreams_unavailable", headers={"Retry-After": retry}
        )
    except UpstreamError as exc:
        return error_response(502, str(exc), code="upstream_unavailable")
    except Exception:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal error in the semcache sidecar", code="internal_error")
