"""The HTTP client for the upstream API, with errors translated at this one boundary."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import unquote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from semcache.errors import InvalidRequestError, UpstreamTimeoutError, UpstreamUnavailableError

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the client library sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "cache-control",
        # aiohttp has decoded a compressed request body: what goes upstream is the plain one.
        "content-encoding",
    }
)


def forwardable_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The caller's headers minus hop-by-hop ones and semcache's own ``X-Semcache-*``."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower.startswith("x-semcache-"):
            continue
        out.add(name, value)
    return out


_UNSAFE_IN_PATH = re.compile(r"[\x00-\x1f\x7f\\?#]")


def confined_path(raw_path: str) -> str:
    """``raw_path`` (as the client sent it, percent-encoded) when it names something under
    ``/v1/`` and nothing else once decoded: no ``.`` or ``..`` segment, no empty segment, no
    encoded slash, backslash, ``?``, ``#`` or control character. It is forwarded as it came, so
    the upstream sees what was checked here.

    Raises:
        InvalidRequestError: anything else, which might reach outside the upstream's base path.
    """
    decoded = unquote(raw_path)
    segments = raw_path.split("/")
    if (
        not raw_path.startswith("/v1/")
        or _UNSAFE_IN_PATH.search(decoded)
        or any(unquote(segment) in ("", ".", "..") for segment in segments[1:])
        or any("/" in unquote(segment) for segment in segments)
    ):
        raise InvalidRequestError(
            f"the path {raw_path[:200]!r} is not a plain /v1/ path; it is not forwarded",
            field="path",
        )
    return raw_path


class Upstream:
    """One OpenAI-compatible base URL, reached through a shared connection pool."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                auto_decompress=True,
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, query: str = "") -> str:
        """``/v1/chat/completions`` → ``<base_url>/chat/completions`` (the base ends in /v1)."""
        tail = path.removeprefix("/v1")
        return f"{self.base_url}{tail}" + (f"?{query}" if query else "")

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        query: str = "",
        url: str | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request to ``path`` under the base URL (or to ``url``); the response's body
        is read inside the ``async with``.

        Raises:
            UpstreamUnavailableError: the connection failed or broke before the headers.
            UpstreamTimeoutError: no response headers within the timeout.
        """
        await self.start()
        assert self._session is not None
        try:
            response = await self._session.request(
                method,
                URL(url or self.url(path, query), encoded=True),
                headers=headers,
                data=_payload(body),
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(f"the upstream did not answer in time: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailableError(f"the upstream is unreachable: {exc}") from exc
        try:
            yield response
        finally:
            response.release()


# aiohttp writes a bytes body in one piece, which for an image or a document of megabytes holds
# the event loop (and it warns); a file-like body is written in chunks.
_CHUNKED_FROM = 2**20


def _payload(body: bytes | None) -> bytes | io.BytesIO | None:
    return io.BytesIO(body) if body is not None and len(body) > _CHUNKED_FROM else body
