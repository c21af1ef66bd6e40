"""Property-based fuzzing of the running sidecar (hypothesis): request bodies, headers and
upstream answers drawn at random, against one sidecar on 127.0.0.1.

Properties: bad client input never gets a 5xx; every error is an OpenAI error object and says
``X-Semcache``; an upstream answer is either relayed as a valid answer or refused with 502, and
nothing invalid is ever stored. Bounded to run in well under a minute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcache.dialects import CHAT, COMPLETIONS, MESSAGES, RESPONSES, Dialect
from tests.conftest import WordHashEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.sidecar import MODEL, Sidecar, start_sidecar

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: CI failures reproduce
)


class Running:
    """A sidecar and its fake upstream on an event loop of their own, in a thread, so that
    hypothesis's synchronous examples can send it requests."""

    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstream = FakeOpenAI()
        started: concurrent.futures.Future[Sidecar] = concurrent.futures.Future()
        self.serving = asyncio.run_coroutine_threadsafe(self._serve(directory, started), self.loop)
        self.sidecar = started.result(120)

    async def _serve(self, directory: Path, started: concurrent.futures.Future[Sidecar]) -> None:
        self._stop = asyncio.Event()
        try:
            await self.upstream.start()
            # history_match meaning: every multi-turn body also walks the recognition of its
            # earlier turns (truncated bodies re-parsed, looked up).
            async with start_sidecar(
                directory, WordHashEmbedder(), self.upstream, max_retries=0,
                history_match="meaning",
            ) as sidecar:  # fmt: skip
                started.set_result(sidecar)
                await self._stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            await self.upstream.stop()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.serving.result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def request(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        async def send() -> tuple[int, bytes, dict[str, str]]:
            async with (
                aiohttp.ClientSession() as session,
                session.request(
                    method, self.sidecar.url + path, data=data, headers=headers
                ) as response,
            ):
                return response.status, await response.read(), dict(response.headers)

        return asyncio.run_coroutine_threadsafe(send(), self.loop).result(60)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    the = Running(tmp_path_factory.mktemp("fuzz"))
    yield the
    the.close()


def _assert_error_object(status: int, body: bytes, headers: dict[str, str]) -> None:
    assert "X-Semcache" in headers, (status, body[:200])
    if status >= 400:
        reply = orjson.loads(body)
        error = reply["error"]
        if reply.get("type") == "error":  # Anthropic's own, relayed on its Messages API
            assert {"type", "message"} <= set(error), body[:200]
        else:  # the sidecar's, in OpenAI's shape
            assert set(error) == {"message", "type", "param", "code"}, body[:200]
        assert isinstance(error["message"], str)


def _assert_nothing_invalid_stored(the: Running) -> None:
    cache = the.sidecar.cache
    for entry_id in range(1, 10_000):
        entry = cache.entry(entry_id)
        if entry is None:
            if entry_id > len(cache) + 50:
                break
            continue
        kind = entry.response.get("object") or entry.response.get("type")
        dialect = {"text_completion": COMPLETIONS, "response": RESPONSES, "message": MESSAGES}
        assert dialect.get(kind, CHAT).valid_answer(entry.response), entry.response


# -- strategies -----------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
contents = st.one_of(
    st.text(max_size=80),
    json_values,
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "x"]), "text": json_values}
        ),
        max_size=3,
    ),
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), json_values)},
        optional={"content": contents, "name": json_values, "tool_calls": json_values},
    ),
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just(MODEL), json_values),
        "messages": st.one_of(messages, json_values),
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": json_values,
        "n": json_values,
        "temperature": json_values,
        "max_tokens": json_values,
        "tools": json_values,
    },
)
raw_bodies = st.one_of(
    chat_bodies.map(orjson.dumps),
    json_values.map(orjson.dumps),
    st.binary(max_size=200),
    st.integers(1, 400).map(lambda d: b'{"model":"m","messages":' + b"[" * d + b"]" * d + b"}"),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.dictionaries(
    st.sampled_from(
        [
            "Authorization",
            "x-api-key",
            "api-key",
            "Cache-Control",
            "X-Semcache-Min-Similarity",
            "X-Semcache-Min-Confidence",
            "X-Semcache-TTL",
            "X-Semcache-Namespace",
            "X-Semcache-Priority",
            "Content-Type",
        ]
    ),
    header_values,
    max_size=5,
)


# -- properties -----------------------------------------------------------------------------


responses_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just(MODEL), json_values),
        "input": st.one_of(st.text(max_size=40), messages, json_values),
        "instructions": json_values,
        "previous_response_id": json_values,
        "stream": st.one_of(st.booleans(), json_values),
        "max_output_tokens": json_values,
    },
).map(orjson.dumps)
messages_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just(MODEL), json_values),
        "messages": st.one_of(messages, json_values),
        "system": json_values,
        "max_tokens": json_values,
        "stream": st.one_of(st.booleans(), json_values),
    },
).map(orjson.dumps)
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"]


@FUZZ
@given(body=st.one_of(raw_bodies, responses_bodies, messages_bodies), path=st.sampled_from(PATHS))
def test_no_request_body_gets_a_5xx(running: Running, body: bytes, path: str) -> None:
    running.upstream.default = Behaviour()
    status, answer, got = running.request(
        "POST", path, body, {"Authorization": "Bearer sk-fuzz", "Content-Type": "application/json"}
    )
    assert status < 500, (status, answer[:300])
    _assert_error_object(status, answer, got)


@FUZZ
@given(extra=headers, text=st.text(min_size=1, max_size=40))
def test_no_header_gets_a_5xx(running: Running, extra: dict[str, str], text: str) -> None:
    running.upstream.default = Behaviour()
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]})
    status, answer, got = running.request("POST", "/v1/chat/completions", body, extra)
    assert status < 500, (status, answer[:300])
    _assert_error_object(status, answer, got)


answers = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "choices": st.one_of(
                json_values,
                st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "index": json_values,
                            "finish_reason": st.one_of(st.just("stop"), json_values),
                            "message": st.one_of(
                                json_values,
                                st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "role": json_values,
                                        "content": st.one_of(st.text(max_size=20), json_values),
                                        "tool_calls": json_values,
                                    },
                                ),
                            ),
                        },
                    ),
                    max_size=2,
                ),
            )
        },
        optional={"usage": json_values, "id": json_values, "model": json_values},
    ),
)


@FUZZ
@given(
    answer=answers | json_values.map(lambda v: {"type": "message", "content": v}),
    stream=st.booleans(),
    text=st.text(min_size=3, max_size=30),
    dialect=st.sampled_from([CHAT, RESPONSES, MESSAGES]),
)
def test_upstream_answers_are_relayed_valid_or_refused_and_never_stored_invalid(
    running: Running, answer: Any, stream: bool, text: str, dialect: Dialect
) -> None:
    data = orjson.dumps(answer)
    running.upstream.default = Behaviour(raw_events=[data]) if stream else Behaviour(raw_body=data)
    asked: dict[str, Any] = {"model": MODEL, "stream": stream, "max_tokens": 50}
    if dialect is RESPONSES:
        asked["input"] = text
    else:
        asked["messages"] = [{"role": "user", "content": text}]
    status, reply, got = running.request(
        "POST",
        dialect.path,
        orjson.dumps(asked),
        {"Authorization": "Bearer sk-fuzz", "Content-Type": "application/json"},
    )
    assert status in (200, 502), (status, reply[:300])
    _assert_error_object(status, reply, got)
    if status == 200 and not stream:
        assert dialect.valid_answer(orjson.loads(reply))
    assert b"HTTP/1.1" not in reply
    _assert_nothing_invalid_stored(running)
