"""Hostile clients, hostile upstreams and failing disks: no wrong answer, no shared tenant, no
500, nothing invalid stored (each test pins one defect found by probing the running sidecar)."""

from __future__ import annotations

import asyncio
import copy
import gzip
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import numpy as np
import orjson
import pytest
from backports import zstd
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from semcache import SemanticCache, SentenceTransformerEmbedder
from semcache.dialects import CHAT, Keying
from semcache.keys import CacheRequest
from semcache.server.controls import tenant_namespace, tenant_of
from semcache.server.pipeline.relay import MAX_ANSWER_BYTES, EventSplitter
from tests.conftest import CountingEmbedder, WordHashEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.sidecar import MODEL, Sidecar, ask, start_sidecar

FAST = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05}


async def raw_post(
    sidecar: Sidecar, path: str, data: bytes, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(sidecar.url + path, data=data, headers=headers) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


def _chat_body(text: str, **extra: Any) -> bytes:
    return orjson.dumps(ask(text, **extra))


def _error_object(body: bytes) -> dict[str, Any]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


# -- 2. every credential scheme is a tenant of its own ------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"Authorization": "Basic dXNlcjE6cGFzcw=="}, {"Authorization": "Basic dXNlcjI6cGFzcw=="}),
        ({"x-api-key": "sk-ant-one"}, {"x-api-key": "sk-ant-two"}),
        ({"Authorization": "Bearer\tsk-one"}, {"Authorization": "Bearer\tsk-two"}),
        ({"Authorization": "Token one"}, {"Authorization": "Token two"}),
        ({"Authorization": "bearer sk-one"}, {"Authorization": "BEARER  sk-two"}),
    ],
)
async def test_every_credential_scheme_is_a_tenant_of_its_own(
    tmp_path: Path, upstream: FakeOpenAI, first: dict[str, str], second: dict[str, str]
) -> None:
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream) as sidecar:
        body = _chat_body("What is the capital of France?")
        json = {"Content-Type": "application/json"}
        status, _, headers = await raw_post(sidecar, "/v1/chat/completions", body, json | first)
        assert status == 200 and headers["X-Semcache"] == "miss"
        _, _, again = await raw_post(sidecar, "/v1/chat/completions", body, json | first)
        assert again["X-Semcache"] == "hit"  # the same caller is served from the cache
        _, _, other = await raw_post(sidecar, "/v1/chat/completions", body, json | second)
        assert other["X-Semcache"] == "miss"
        assert len(upstream.calls()) == 2


async def test_callers_without_credentials_share_nothing_unless_allowed(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    body = _chat_body("What is the capital of France?")
    json = {"Content-Type": "application/json"}
    async with start_sidecar(tmp_path / "a", WordHashEmbedder(), upstream) as sidecar:
        for _ in range(2):
            status, _, headers = await raw_post(sidecar, "/v1/chat/completions", body, json)
            assert status == 200 and headers["X-Semcache"] == "bypass"
        assert len(sidecar.cache) == 0
    async with start_sidecar(
        tmp_path / "b", WordHashEmbedder(), upstream, anonymous_cache=True
    ) as sidecar:
        await raw_post(sidecar, "/v1/chat/completions", body, json)
        _, _, headers = await raw_post(sidecar, "/v1/chat/completions", body, json)
        assert headers["X-Semcache"] == "hit"


def test_tenants_of_distinct_credentials_differ() -> None:
    tenants = {
        tenant_of(headers, None)
        for headers in (
            {"Authorization": "Bearer a"},
            {"Authorization": "Basic a"},
            {"x-api-key": "a"},
            {"api-key": "b"},
            {"Authorization": "Bearer a", "x-api-key": "b"},
        )
    }
    assert len(tenants) == 5 and None not in tenants
    assert tenant_of({}, None) is None
    # A plain key keeps the tenant it always had: existing caches stay reachable.
    assert tenant_of({"Authorization": "Bearer a"}, None) == tenant_of({"api-key": "a"}, None)


# -- 3. malformed upstream answers are never stored nor replayed ---------------------------

_ANSWER = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": MODEL}


@pytest.mark.parametrize(
    "answer",
    [
        {**_ANSWER, "choices": [{"index": 0, "message": "just a string", "finish_reason": "stop"}]},
        {
            **_ANSWER,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": 12345},
                    "finish_reason": "stop",
                }
            ],
        },
        {
            **_ANSWER,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x", "tool_calls": 5},
                    "finish_reason": "stop",
                }
            ],
        },
        {**_ANSWER, "choices": [1]},
        {**_ANSWER, "choices": "abc"},
        [1, 2, 3],
        "not an object",
    ],
)
async def test_an_invalid_answer_is_a_502_and_never_stored(
    tmp_path: Path, upstream: FakeOpenAI, answer: object
) -> None:
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream) as sidecar:
        upstream.script = [Behaviour(raw_body=orjson.dumps(answer))]
        status, body, _ = await sidecar.post(
            "/v1/chat/completions", _chat_body("Hello there, who?")
        )
        assert status == 502 and body["error"]["code"] == "invalid_upstream_answer"
        assert len(sidecar.cache) == 0
        status, _, headers = await sidecar.post(
            "/v1/chat/completions", _chat_body("Hello there, who?")
        )
        assert status == 200 and headers["X-Semcache"] == "miss"


@pytest.mark.parametrize(
    "event",
    [
        b'{"id":"c","choices":[1]}',
        b'{"id":"c","choices":["abc"]}',
        b'{"id":"c","choices":[{"index":0,"delta":"a string","finish_reason":null}]}',
        b'{"id":"c","choices":[{"index":[0],"delta":{"content":"x"},"finish_reason":null}]}',
        b'"abc"',
        b"not json at all",
    ],
)
async def test_a_malformed_stream_ends_in_an_error_event_and_is_not_stored(
    tmp_path: Path, upstream: FakeOpenAI, event: bytes
) -> None:
    good = orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": "fine"}, "finish_reason": "stop"}],
        }
    )
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream) as sidecar:
        upstream.script = [Behaviour(raw_events=[event, good])]
        status, raw, _ = await raw_post(
            sidecar,
            "/v1/chat/completions",
            _chat_body("Tell me a story please", stream=True),
            {"Authorization": "Bearer sk-a", "Content-Type": "application/json"},
        )
        assert status == 200
        assert b"invalid_upstream_answer" in raw and b"HTTP/1.1" not in raw
        assert len(sidecar.cache) == 0


def _chunk(content: str, finish: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
    )


async def test_a_stream_with_crlf_lines_cut_between_cr_and_lf_is_read_whole(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    """Server-sent events may end their lines with CRLF (some OpenAI-compatible servers and
    proxies do). Where a read ended between the CR and the LF of the blank line that closes an
    event, that event and the next were read as one, and the stream failed as malformed."""
    stream = (
        b"data: " + _chunk("Once upon ") + b"\r\n\r\n"
        b"data: " + _chunk("a time.", "stop") + b"\r\n\r\n"
        b"data: [DONE]\r\n\r\n"
    )
    cut = stream.index(b"\r\n\r\n") + 3  # after "\r\n\r", before the last "\n"
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream) as sidecar:
        upstream.script = [Behaviour(raw_stream=[stream[:cut], stream[cut:]])]
        headers = {"Authorization": "Bearer sk-a", "Content-Type": "application/json"}
        body = _chat_body("Tell me a story please", stream=True)
        status, raw, _ = await raw_post(sidecar, "/v1/chat/completions", body, headers)
        assert status == 200
        assert b"invalid_upstream_answer" not in raw
        assert b"Once upon " in raw and b"a time." in raw
        await sidecar.settled()
        assert len(sidecar.cache) == 1


@given(
    st.lists(st.binary(min_size=1, max_size=30).map(lambda b: b"data: " + b.hex().encode())),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_events_come_out_whole_however_the_stream_is_cut(
    events: list[bytes], newline: bytes, cuts: list[int]
) -> None:
    stream = b"".join(event + newline + newline for event in events)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    splitter = EventSplitter()
    out = [e for a, b in itertools.pairwise(bounds) for e in splitter.feed(stream[a:b])]
    assert out == events
    assert splitter.pending == 0 and splitter.read == len(stream)


async def test_an_endless_event_or_an_answer_of_tens_of_megabytes_is_not_stored(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    """An upstream that streams megabytes without ever closing an event was read into one
    growing buffer, scanned again on every read; an answer of tens of megabytes was stored
    and replayed. An event past MAX_ANSWER_BYTES is malformed, and an answer past it is
    passed on but not stored."""
    endless = b"data: " + b"x" * (MAX_ANSWER_BYTES + 1)
    pieces = [endless[i : i + 2**20] for i in range(0, len(endless), 2**20)]
    huge = {
        **_ANSWER,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "w " * (5 * 2**20)},
                "finish_reason": "stop",
            }
        ],
    }
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream) as sidecar:
        headers = {"Authorization": "Bearer sk-a", "Content-Type": "application/json"}
        upstream.script = [Behaviour(raw_stream=pieces)]
        body = _chat_body("Tell me a story please", stream=True)
        status, raw, _ = await raw_post(sidecar, "/v1/chat/completions", body, headers)
        assert status == 200 and b"invalid_upstream_answer" in raw
        upstream.script = [Behaviour(raw_body=orjson.dumps(huge))]
        body = _chat_body("Tell me a long story please")
        status, raw, _ = await raw_post(sidecar, "/v1/chat/completions", body, headers)
        assert status == 200 and len(raw) > MAX_ANSWER_BYTES
        await sidecar.settled()
        assert len(sidecar.cache) == 0


async def test_a_stored_answer_of_the_wrong_shape_is_never_replayed(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream) as sidecar:
        body = ask("Tell me a story please", stream=True)
        namespace = tenant_namespace(tenant_of({"Authorization": "Bearer sk-a"}, None) or "", None)
        parsed = CHAT.parse(body, Keying(namespace))
        assert parsed.request is not None
        sidecar.cache.store(parsed.request, {**_ANSWER, "choices": [1]})  # an old, bad entry
        status, raw, headers = await raw_post(
            sidecar,
            "/v1/chat/completions",
            orjson.dumps(body),
            {"Authorization": "Bearer sk-a", "Content-Type": "application/json"},
        )
        assert status == 200 and headers["X-Semcache"] == "miss"
        assert raw.rstrip().endswith(b"data: [DONE]") and b"HTTP/1.1" not in raw


# -- 4, 5. bad JSON and unknown routes are OpenAI errors, never 500 -------------------------


@pytest.mark.parametrize("depth", [200, 300, 1100])
async def test_deeply_nested_json_is_a_400(sidecar: Sidecar, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    data = b'{"model":"m","messages":[{"role":"user","content":"hi there","x":' + nested.encode()
    status, body, _ = await sidecar.post("/v1/chat/completions", data + b"}]}")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


async def test_a_body_with_a_byte_order_mark_is_answered_and_cached(sidecar: Sidecar) -> None:
    bom = "\ufeff".encode()
    headers = {"Authorization": "Bearer sk-a", "Content-Type": "application/json"}
    first = await raw_post(sidecar, "/v1/chat/completions", bom + _chat_body("bom here"), headers)
    again = await raw_post(sidecar, "/v1/chat/completions", _chat_body("bom here"), headers)
    assert first[0] == 200 and first[2]["X-Semcache"] == "miss"
    assert again[0] == 200 and again[2]["X-Semcache"] == "hit"
    assert sidecar.upstream.received[0].body["messages"][0]["content"] == "bom here"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/healthz", 405),
        ("GET", "/nope", 404),
        ("GET", "/admin/entries/abc", 400),
    ],
)
async def test_routing_errors_are_openai_error_objects(
    sidecar: Sidecar, method: str, path: str, status: int
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, sidecar.url + path, headers={"Authorization": "Bearer s3cret"}
        ) as response,
    ):
        assert response.status == status
        assert response.content_type == "application/json"
        _error_object(await response.read())
        assert response.headers["X-Semcache"] == "error"


# -- 6. bodies are read under a time limit --------------------------------------------------


async def _raw_http(port: int, head: bytes, body: bytes, wait_s: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), wait_s)
    finally:
        writer.close()


async def test_a_stalled_or_oversized_body_is_refused_quickly(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(
        tmp_path, WordHashEmbedder(), upstream, body_read_timeout_s=0.5
    ) as sidecar:
        port = int(sidecar.url.rsplit(":", 1)[1])
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        )
        started = time.monotonic()
        answer = await _raw_http(port, head % 1000, b"{}", wait_s=5)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 3
        answer = await _raw_http(port, head % 10_000_000_000, b"{}", wait_s=5)
        assert answer.startswith(b"HTTP/1.1 413")


async def test_stalled_large_bodies_do_not_hold_up_small_requests(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(
        tmp_path, WordHashEmbedder(), upstream, body_read_timeout_s=5, max_pending_bodies=2
    ) as sidecar:
        port = int(sidecar.url.rsplit(":", 1)[1])
        stalled = []
        for _ in range(4):  # twice the cap, each declaring 1 MB and sending 2 bytes
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{}"
            )
            stalled.append(writer)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        status, _, _ = await sidecar.post("/v1/chat/completions", _chat_body("Small question"))
        assert status == 200 and time.monotonic() - started < 2
        for writer in stalled:
            writer.close()


# -- 7. an outage is a 503 at once, not a 30 s wait for a 429 -------------------------------


async def test_with_every_breaker_open_requests_get_503_at_once(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    from semcache.upstream.specs import parse_upstreams

    specs = parse_upstreams([{"name": "main", "base_url": upstream.url, "api_keys": ["k"]}], {})
    upstream.default = Behaviour(status=500)
    async with start_sidecar(
        tmp_path,
        WordHashEmbedder(),
        upstream,
        upstreams=specs,
        breaker_failures=2,
        breaker_reset_s=60,
        max_retries=1,
        **FAST,
    ) as sidecar:
        status, _, _ = await sidecar.post("/v1/chat/completions", _chat_body("first question here"))
        assert status in (500, 503)
        started = time.monotonic()
        status, body, headers = await sidecar.post(
            "/v1/chat/completions", _chat_body("second question here")
        )
        assert status == 503 and time.monotonic() - started < 2
        assert body["error"]["code"] == "upstreams_unavailable"
        assert 1 <= int(headers["Retry-After"]) <= 60


# -- 9, 10. what is forwarded is what was checked -------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/%2e%2e/internal/admin",
        "/v1/%2E%2E/%2E%2E/internal",
        "/v1/models/%2e%2e%2finternal",
        "/v1/./models",
        "/v1//models",
        "/v1/models%5c..%5cadmin",
    ],
)
async def test_a_path_that_escapes_v1_is_refused_and_never_forwarded(
    tmp_path: Path, upstream: FakeOpenAI, path: str
) -> None:
    from semcache.upstream.specs import parse_upstreams

    specs = parse_upstreams(
        [{"name": "main", "base_url": upstream.url, "api_keys": ["pool-key-1"]}], {}
    )
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream, upstreams=specs) as sidecar:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                aiohttp.client.URL(sidecar.url + path, encoded=True),
                headers={"Authorization": "Bearer sk-client"},
            ) as response,
        ):
            assert response.status in (400, 404)
            _error_object(await response.read())
        assert upstream.received == []


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("br", brotli.compress), ("zstd", zstd.compress)],
)
async def test_a_compressed_body_is_forwarded_decoded_and_a_bad_one_is_a_400(
    sidecar: Sidecar, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    """HTTP clients compress request bodies with gzip, Brotli or Zstandard. The last two were
    refused before the request reached the sidecar: a plain-text 400 from the HTTP parser
    ("Please install `Brotli`"), not an API error."""
    headers = {
        "Authorization": "Bearer sk-a",
        "Content-Type": "application/json",
        "Content-Encoding": encoding,
    }
    data = compress(_chat_body("What is the boiling point of water?"))
    status, _, _ = await raw_post(sidecar, "/v1/chat/completions", data, headers)
    assert status == 200
    seen = sidecar.upstream.calls()[0]
    assert "Content-Encoding" not in seen.headers and seen.body["model"] == MODEL
    status, body, _ = await raw_post(sidecar, "/v1/chat/completions", b"not compressed", headers)
    assert status == 400
    _error_object(body)
    status, _, _ = await raw_post(sidecar, "/v1/embeddings", compress(b'{"model":"e"}'), headers)
    assert status == 200 and "Content-Encoding" not in sidecar.upstream.received[-1].headers


# -- 11. the tokenizer under threads ---------------------------------------------------------


def tripwired(tokenizer: Any) -> tuple[Any, Counter[str]]:
    """A copy of a Hugging Face tokenizer that counts every moment two threads are inside one
    tokenizer object at once (fast tokenizers are not thread-safe: "Already borrowed"). Its
    copies (deepcopy) are watched too, each on its own. Each call lingers a little so that an
    unguarded overlap shows up reliably."""
    seen: Counter[str] = Counter()
    inside: Counter[int] = Counter()
    watch = threading.Lock()
    base = type(tokenizer)

    class Tripped(base):  # type: ignore[misc, valid-type]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with watch:
                inside[id(self)] += 1
                seen["calls"] += 1
                if inside[id(self)] > 1:
                    seen["overlaps"] += 1
            try:
                time.sleep(0.002)
                return super().__call__(*args, **kwargs)
            finally:
                with watch:
                    inside[id(self)] -= 1

    watched = copy.deepcopy(tokenizer)
    watched.__class__ = Tripped
    return watched, seen


def test_no_two_threads_use_one_tokenizer_at_once(
    tmp_path: Path, torch_model: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = torch_model
    watched, seen = tripwired(model.model.tokenizer)
    monkeypatch.setattr(model.model[0], "processor", watched)  # what encode() calls
    monkeypatch.setattr(model, "_reader", None, raising=False)  # copied from it on first read
    failures: list[BaseException] = []
    with SemanticCache(tmp_path, embedder=model) as cache:
        cache.put("Which planet is closest to the sun?", "Mercury")

        def work(worker: int) -> None:
            try:
                for i in range(6):
                    prompt = f"question {i} from worker {worker} about the weather in town"
                    cache.lookup(CacheRequest(prompt=prompt))
                    cache.put(prompt + " tomorrow", "sunny")
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert seen["calls"] > 0 and seen["overlaps"] == 0


# -- 12. a body that breaks before it reached the client is retried, then 502/504 -----------


async def test_a_cut_or_stalled_upstream_body_is_retried_then_502_or_504(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(
        tmp_path, WordHashEmbedder(), upstream, max_retries=1, upstream_timeout_s=0.5, **FAST
    ) as sidecar:
        upstream.script = [Behaviour(body_fault="cut"), Behaviour()]
        status, body, headers = await sidecar.post("/v1/chat/completions", _chat_body("one two"))
        assert status == 200 and headers["X-Semcache-Retries"] == "1"
        upstream.script = [Behaviour(body_fault="cut"), Behaviour(body_fault="cut")]
        status, body, _ = await sidecar.post("/v1/chat/completions", _chat_body("three four"))
        assert status == 502 and body["error"]["code"] == "upstream_unavailable"
        upstream.script = [Behaviour(body_fault="stall"), Behaviour(body_fault="stall")]
        status, body, _ = await sidecar.post("/v1/chat/completions", _chat_body("five six"))
        assert status == 504 and body["error"]["code"] == "upstream_timeout"


# -- 13. no timing channel between tenants through the embedding memo -----------------------


def test_the_embedding_memo_is_kept_per_namespace(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    with SemanticCache(tmp_path, embedder=embedder) as cache:
        for namespace in ("tenant-a", "tenant-b"):
            cache.put("Which planet is closest to the sun?", "Mercury", namespace=namespace)
        asked = "How tall is the tallest mountain on earth?"
        cache.lookup(CacheRequest(prompt=asked, namespace="tenant-a"))
        before = sum(embedder.calls)
        cache.lookup(CacheRequest(prompt=asked, namespace="tenant-b"))
        assert sum(embedder.calls) == before + 1  # tenant B pays for its own embedding
        cache.lookup(CacheRequest(prompt=asked, namespace="tenant-b"))
        assert sum(embedder.calls) == before + 1


# -- 14. an exact hit never waits for the model ---------------------------------------------


class GatedEmbedder(WordHashEmbedder):
    """Embeds only while its gate is open."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(30)
        return super().embed(texts)


async def test_an_exact_hit_is_served_while_the_model_is_busy(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    gated = GatedEmbedder()
    async with start_sidecar(tmp_path, gated, upstream) as sidecar:  # type: ignore[arg-type]
        stored = _chat_body("What is the capital of France?")
        assert (await sidecar.post("/v1/chat/completions", stored))[0] == 200
        gated.gate.clear()
        slow = asyncio.create_task(
            sidecar.post("/v1/chat/completions", _chat_body("Describe the life of owls"))
        )
        await asyncio.to_thread(gated.waiting.wait, 10)
        try:
            status, _, headers = await asyncio.wait_for(
                sidecar.post("/v1/chat/completions", stored), 5
            )
            assert status == 200 and headers["X-Semcache"] == "hit"
            assert not slow.done()
        finally:
            gated.gate.set()
        assert (await slow)[0] == 200


# -- 15. the namespace limit is the one documented ------------------------------------------


async def test_a_namespace_of_256_characters_is_accepted(sidecar: Sidecar) -> None:
    body = _chat_body("What is the capital of France?")
    status, _, _ = await sidecar.post(
        "/v1/chat/completions", body, {"X-Semcache-Namespace": "n" * 256}
    )
    assert status == 200
    status, error, _ = await sidecar.post(
        "/v1/chat/completions", body, {"X-Semcache-Namespace": "n" * 257}
    )
    assert status == 400 and error["error"]["param"] == "X-Semcache-Namespace"
