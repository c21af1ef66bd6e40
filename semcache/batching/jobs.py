"""Provider batch jobs (OpenAI's Batch API), without HTTP: the JSONL file a job is made of,
the multipart upload that carries it, and the reading of its output and error files.

A job is a file of requests, one JSON object per line (``custom_id``, ``method``, ``url``,
``body``), uploaded to ``/v1/files`` with purpose ``batch``, then started with
``/v1/batches``; all requests of one file go to one endpoint and one model. The provider
answers within the completion window (24 h) at about half the price, in an output file of the
same lines with ``response: {status_code, body}`` (and an error file for the failed ones).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

COMPLETION_WINDOW = "24h"
# What a batch job costs against the same calls made one by one (OpenAI: 50% off).
PRICE_FACTOR = 0.5
# Paths a provider batch job can carry, of those the sidecar caches.
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
# A job's states at the provider (``/v1/batches/{id}``) after which nothing more will come.
FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})


def input_file(requests: Sequence[tuple[str, str, Mapping[str, Any]]]) -> bytes:
    """The JSONL of a job: one line per ``(custom_id, path, body)``."""
    return b"".join(
        orjson.dumps({"custom_id": custom_id, "method": "POST", "url": path, "body": body}) + b"\n"
        for custom_id, path, body in requests
    )


def upload(data: bytes, filename: str = "semcache-batch.jsonl") -> tuple[bytes, str]:
    """The multipart body and its content type that upload ``data`` as a batch input file."""
    boundary = "semcache-" + secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="file"; filename="{filename}"\r\nContent-Type: application/jsonl\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True)
class Result:
    """One line of an output or error file: the answer of ``custom_id``, or why none came."""

    custom_id: str
    status: int  # the HTTP status the request got (0: none, the line is an error)
    body: Any  # the response body (an answer, or an error object)
    error: str | None = None


def results(data: bytes) -> Iterator[Result]:
    """The lines of an output or error file; a line that cannot be read is skipped (its
    request then counts as unanswered)."""
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        custom_id = row.get("custom_id") if isinstance(row, dict) else None
        if not isinstance(custom_id, str):
            continue
        response = row.get("response")
        error = row.get("error")
        message = None
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("code") or "error")
        elif error is not None:
            message = str(error)
        if isinstance(response, dict):
            status = response.get("status_code")
            yield Result(
                custom_id,
                status if isinstance(status, int) and not isinstance(status, bool) else 0,
                response.get("body"),
                message,
            )
        else:
            yield Result(custom_id, 0, None, message or "no response")
