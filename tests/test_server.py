"""The sidecar end to end: the official openai SDK → semcache → a fake upstream, all real
HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from semcache.server.controls import tenant_of
from semcache.server.state import STATE
from tests.conftest import CountingEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.sidecar import MODEL, Sidecar, ask, start_sidecar


async def test_a_paraphrase_is_served_from_cache_and_upstream_is_called_once(
    sidecar: Sidecar,
) -> None:
    client = sidecar.client()
    first = await client.chat.completions.with_raw_response.create(
        **ask("What is the capital of France?")
    )
    assert first.headers["X-Semcache"] == "miss"
    answer = first.parse().choices[0].message.content
    second = await client.chat.completions.with_raw_response.create(
        **ask("What's the capital city of France?")
    )
    assert second.headers["X-Semcache"] == "hit"
    assert float(second.headers["X-Semcache-Score"]) >= 0.85
    assert second.headers["X-Semcache-Entry"]
    completion = second.parse()
    assert completion.choices[0].message.content == answer
    assert completion.id != first.parse().id and completion.id.startswith("chatcmpl-")
    assert len(sidecar.upstream.calls()) == 1
    # The upstream saw the caller's credentials and the body as sent.
    seen = sidecar.upstream.calls()[0]
    assert seen.headers["Authorization"] == "Bearer sk-tenant-one"
    assert seen.body["messages"][0]["content"] == "What is the capital of France?"


async def test_a_streamed_hit_parses_into_the_same_text(sidecar: Sidecar) -> None:
    client = sidecar.client()
    plain = await client.chat.completions.create(**ask("How many legs does a spider have?"))
    stream = await client.chat.completions.create(
        **ask("How many legs do spiders have?"), stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == plain.choices[0].message.content
    assert finish == "stop"
    assert usage is not None and usage.total_tokens == plain.usage.total_tokens  # type: ignore[union-attr]
    assert len(sidecar.upstream.calls()) == 1


async def test_a_streamed_miss_is_relayed_stored_and_then_served(sidecar: Sidecar) -> None:
    client = sidecar.client()
    stream = await client.chat.completions.create(**ask("Name three primary colours."), stream=True)
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    streamed = "".join(pieces)
    assert streamed.startswith("Answer #1 to: Name three primary colours.")
    # The usage chunk the sidecar asked for was not passed to a client that did not ask.
    assert sidecar.upstream.calls()[0].body["stream_options"] == {"include_usage": True}
    hit = await client.chat.completions.with_raw_response.create(
        **ask("name three primary colours")
    )
    assert hit.headers["X-Semcache"] == "hit"
    assert hit.parse().choices[0].message.content == streamed
    assert hit.parse().usage is not None


async def test_two_tenants_never_share_an_entry(sidecar: Sidecar) -> None:
    one, two = sidecar.client("sk-tenant-one"), sidecar.client("sk-tenant-two")
    await one.chat.completions.create(**ask("What is the capital of France?"))
    other = await two.chat.completions.with_raw_response.create(
        **ask("What is the capital of France?")
    )
    assert other.headers["X-Semcache"] == "miss"
    # A namespace header narrows a tenant; it cannot reach into another tenant's entries.
    crafted = await two.chat.completions.with_raw_response.create(
        **ask("What is the capital of France?"), extra_headers={"X-Semcache-Namespace": "shared"}
    )
    assert crafted.headers["X-Semcache"] == "miss"
    assert len(sidecar.upstream.calls()) == 3


async def test_scope_covers_model_system_prompt_and_sampling(sidecar: Sidecar) -> None:
    client = sidecar.client()
    await client.chat.completions.create(**ask("Tell me a fact about owls."))
    variants = [
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Tell me a fact about owls."}],
        },
        {**ask("Tell me a fact about owls."), "temperature": 0.2},
        {**ask("Tell me a fact about owls."), "max_tokens": 5},
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Tell me a fact about owls."},
            ],
        },
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Tell me a fact about owls."},
            ],
        },
    ]
    for body in variants:
        response = await client.chat.completions.with_raw_response.create(**body)
        assert response.headers["X-Semcache"] == "miss", body
    assert len(sidecar.upstream.calls()) == 1 + len(variants)


async def test_a_cut_stream_is_not_stored_and_the_client_is_told(sidecar: Sidecar) -> None:
    sidecar.upstream.script.append(Behaviour(cut_after_chunks=3))
    client = sidecar.client()
    stream = await client.chat.completions.create(
        **ask("Explain photosynthesis briefly."), stream=True
    )
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="before the end"):
        await read_all()
    assert "".join(received)  # the part that came through was relayed as it arrived
    again = await client.chat.completions.with_raw_response.create(
        **ask("Explain photosynthesis briefly.")
    )
    assert again.headers["X-Semcache"] == "miss"
    await sidecar.settled()
    assert len(sidecar.cache) == 1  # only the complete second answer
    assert len(sidecar.upstream.calls()) == 2


async def test_unfinished_answers_are_not_stored(sidecar: Sidecar) -> None:
    sidecar.upstream.script.append(Behaviour(finish_reason="content_filter"))
    client = sidecar.client()
    await client.chat.completions.create(**ask("Something filtered."))
    assert len(sidecar.cache) == 0


async def test_an_abandoned_stream_is_not_stored(sidecar: Sidecar) -> None:
    sidecar.upstream.script.append(Behaviour(answer=" ".join(["word"] * 2000)))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sidecar.url + "/v1/chat/completions",
            json=ask("Write a very long text.", stream=True),
            headers={"Authorization": "Bearer sk-a"},
        ) as response,
    ):
        await response.content.readline()  # take the first event, then hang up
    await asyncio.sleep(0.5)
    assert len(sidecar.cache) == 0


async def test_upstream_errors_reach_the_client_unchanged_when_retries_are_spent(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, max_retries=0) as sidecar:
        upstream.script.append(Behaviour(status=429, retry_after_s=7))
        status, body, headers = await sidecar.post(
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
        )
        assert status == 429
        assert body["error"]["code"] == "fake_failure"
        assert headers["Retry-After"] == "7"  # the caller's own key: its limits are the caller's
        upstream.script.append(Behaviour(status=500))
        with pytest.raises(openai.InternalServerError):
            await sidecar.client().chat.completions.create(**ask("hi there"))
        assert len(sidecar.cache) == 0


async def test_a_failed_attempt_is_retried_before_the_client_sees_it(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    settings = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05}
    async with start_sidecar(tmp_path, embedder, upstream, **settings) as sidecar:
        upstream.script += [Behaviour(status=503), Behaviour(status=429, retry_after_s=0)]
        completion = await sidecar.client().chat.completions.with_raw_response.create(
            **ask("What is the tallest mountain on Earth?")
        )
        assert completion.parse().choices[0].message.content
        assert completion.headers["X-Semcache-Retries"] == "2"
        assert len(upstream.calls()) == 3


@pytest.mark.parametrize(
    ("data", "headers", "status", "param"),
    [
        (b"{not json", {}, 400, None),
        (b"[1, 2]", {}, 400, None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', {}, 400, "model"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', {}, 400, "model"),
        (b'{"model": "m"}', {}, 400, "messages"),
        (b'{"model": "m", "messages": "hi"}', {}, 400, "messages"),
        (b'{"model": "m", "messages": [{"content": "hi"}]}', {}, 400, "messages[0]"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            {},
            400,
            "stream",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
            {"X-Semcache-Min-Similarity": "2"},
            400,
            "X-Semcache-Min-Similarity",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
            {"X-Semcache-TTL": "soon"},
            400,
            "X-Semcache-TTL",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
            {"X-Semcache-Namespace": "n" * 300},
            400,
            "X-Semcache-Namespace",
        ),
    ],
)
async def test_bad_input_gets_an_openai_error_naming_the_field(
    sidecar: Sidecar, data: bytes, headers: dict[str, str], status: int, param: str | None
) -> None:
    got_status, body, _ = await sidecar.post("/v1/chat/completions", data, headers)
    assert got_status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert sidecar.upstream.received == []


async def test_a_body_over_the_limit_is_413(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, max_body_bytes=1000) as sidecar:
        status, body, _ = await sidecar.post(
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}',
        )
        assert status == 413
        assert body["error"]["code"] == "request_too_large"


async def test_a_request_with_an_image_of_megabytes_is_forwarded(sidecar: Sidecar) -> None:
    """A photo sent inline (a base64 data URL of several megabytes) is what a vision client
    sends every day, and the providers take it (Anthropic's Messages API up to 32 MB): the
    sidecar must not refuse what the upstream would answer."""
    image = "data:image/jpeg;base64," + "A" * (6 * 2**20)
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this photo?"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
    }
    data = orjson.dumps(body)
    status, _, headers = await sidecar.post("/v1/chat/completions", data)
    assert status == 200
    assert headers["X-Semcache"] == "bypass"
    (sent,) = sidecar.upstream.calls()
    assert sent.body["messages"][0]["content"][1]["image_url"]["url"] == image
    # sent whole, with its length declared (not chunked) and its type
    assert sent.headers["Content-Length"] == str(len(data))
    assert sent.headers["Content-Type"] == "application/json"


async def test_the_sdk_sees_a_bad_request_error(sidecar: Sidecar) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sidecar.client().chat.completions.create(model="m", messages=[])
    assert info.value.body["param"] == "messages"  # type: ignore[index]


async def test_an_unreachable_upstream_is_502_and_a_slow_one_504(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    quick = {"max_retries": 1, "retry_backoff_s": 0.01}
    async with start_sidecar(
        tmp_path / "slow", embedder, upstream, upstream_timeout_s=0.3, **quick
    ) as sidecar:
        upstream.script += [Behaviour(delay_s=2), Behaviour(delay_s=2)]
        status, body, _ = await sidecar.post(
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
        )
        assert status == 504 and body["error"]["code"] == "upstream_timeout"
        assert len(upstream.calls()) == 2  # tried twice
    dead = FakeOpenAI(url="http://127.0.0.1:9/v1")  # the discard port: nothing listens
    async with start_sidecar(tmp_path / "dead", embedder, dead, **quick) as sidecar:
        status, body, _ = await sidecar.post(
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
        )
        assert status == 502 and body["error"]["type"] == "upstream_error"


async def test_tool_results_bypass_the_cache(sidecar: Sidecar) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }
    for _ in range(2):
        response = await sidecar.client().chat.completions.with_raw_response.create(**body)
        assert response.headers["X-Semcache"] == "bypass"
        assert "tool" in response.headers["X-Semcache-Reason"]
    assert len(sidecar.upstream.calls()) == 2 and len(sidecar.cache) == 0


async def test_a_web_search_bypasses_the_cache(sidecar: Sidecar) -> None:
    """A request that asks the model to search the web asks for what is true now: an answer
    found last week is no answer to it."""
    client = sidecar.client()
    for _ in range(2):
        response = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the latest news about the euro?"}],
            web_search_options={},
        )
        assert response.headers["X-Semcache"] == "bypass"
        assert "web" in response.headers["X-Semcache-Reason"]
    assert len(sidecar.upstream.calls()) == 2 and len(sidecar.cache) == 0


async def test_cache_control_headers(sidecar: Sidecar) -> None:
    client = sidecar.client()
    r = await client.chat.completions.with_raw_response.create(
        **ask("What is 2 plus 2?"), extra_headers={"Cache-Control": "no-store"}
    )
    assert r.headers["X-Semcache"] == "miss" and len(sidecar.cache) == 0
    await client.chat.completions.create(**ask("What is 2 plus 2?"))
    r = await client.chat.completions.with_raw_response.create(
        **ask("What is 2 plus 2?"), extra_headers={"Cache-Control": "no-cache"}
    )
    assert r.headers["X-Semcache"] == "miss"
    assert len(sidecar.upstream.calls()) == 3
    r = await client.chat.completions.with_raw_response.create(**ask("What is 2 plus 2?"))
    assert r.headers["X-Semcache"] == "hit"
    # A stricter threshold per request turns a paraphrase hit into a miss.
    r = await client.chat.completions.with_raw_response.create(
        **ask("what's two plus two?"), extra_headers={"X-Semcache-Min-Similarity": "0.999"}
    )
    assert r.headers["X-Semcache"] == "miss"


async def test_identical_concurrent_misses_make_one_upstream_call(sidecar: Sidecar) -> None:
    sidecar.upstream.default = Behaviour(delay_s=0.5)
    client = sidecar.client()
    responses = await asyncio.gather(
        *(
            client.chat.completions.with_raw_response.create(
                **ask("Why is the sky blue?"), stream=i % 2 == 1
            )
            for i in range(6)
        )
    )
    assert len(sidecar.upstream.calls()) == 1
    coalesced = [r for r in responses if r.headers.get("X-Semcache-Coalesced") == "true"]
    assert len(coalesced) == 5


async def test_concurrent_lookups_share_an_embedding_batch(sidecar: Sidecar) -> None:
    client = sidecar.client()
    await client.chat.completions.create(**ask("A first question to fill the scope."))
    questions = [f"What is the population of city number {i}?" for i in range(12)]
    await asyncio.gather(*(client.chat.completions.create(**ask(q)) for q in questions))
    assert max(sidecar.app[STATE].batcher.batch_sizes) > 1
    assert len(sidecar.upstream.calls()) == 13


async def test_admin_api(sidecar: Sidecar) -> None:
    client = sidecar.client()
    r = await client.chat.completions.with_raw_response.create(
        **ask("What is the tallest mountain?")
    )
    await client.chat.completions.create(**ask("What is the deepest ocean?"))
    hit = await client.chat.completions.with_raw_response.create(
        **ask("what is the tallest mountain")
    )
    entry = hit.headers["X-Semcache-Entry"]
    assert r.headers["X-Semcache"] == "miss"
    async with aiohttp.ClientSession() as session:
        no_token = await session.post(f"{sidecar.url}/admin/entries/{entry}/wrong")
        assert (
            no_token.status == 401
            and (await no_token.json())["error"]["type"] == "authentication_error"
        )
        auth = {"Authorization": "Bearer s3cret"}
        got = await session.get(f"{sidecar.url}/admin/entries/{entry}", headers=auth)
        assert (await got.json())["prompt"] == "What is the tallest mountain?"
        marked = await session.post(f"{sidecar.url}/admin/entries/{entry}/wrong", headers=auth)
        assert (await marked.json()) == {"marked_wrong": True}
        again = await client.chat.completions.with_raw_response.create(
            **ask("what is the tallest mountain")
        )
        assert again.headers["X-Semcache"] == "miss"
        namespace = tenant_of({"Authorization": "Bearer sk-tenant-one"}, None)
        flushed = await session.delete(f"{sidecar.url}/admin/namespaces/{namespace}", headers=auth)
        assert (await flushed.json())["removed"] == 2
        assert len(sidecar.cache) == 0


async def test_other_paths_are_forwarded_verbatim(sidecar: Sidecar) -> None:
    client = sidecar.client()
    models = await client.models.list()
    assert [m.id async for m in models] == ["gpt-4o-mini"]
    embedding = await client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert embedding.data[0].embedding == [0.1, 0.2]
    assert sidecar.upstream.received[0].headers["Authorization"] == "Bearer sk-tenant-one"


async def test_legacy_completions_are_cached(sidecar: Sidecar) -> None:
    client = sidecar.client()
    first = await client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Write a haiku about the sea"
    )
    second = await client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="write a haiku about the sea"
    )
    assert second.headers["X-Semcache"] == "hit"
    assert second.parse().choices[0].text == first.choices[0].text
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Write a haiku about the sea.", stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == first.choices[0].text


async def test_a_cache_fault_fails_open(sidecar: Sidecar) -> None:
    client = sidecar.client()
    await client.chat.completions.create(**ask("What is the capital of France?"))
    await sidecar.settled()

    def broken(texts: Any) -> Any:
        raise RuntimeError("the model crashed")

    sidecar.cache._embedder.embed = broken  # type: ignore[method-assign]
    r = await client.chat.completions.with_raw_response.create(
        **ask("Which city is the capital of France?")
    )
    assert r.status_code == 200 and r.headers["X-Semcache"] == "bypass"
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(sidecar.url + "/metrics")).text()
    assert 'semcache_cache_errors_total{stage="lookup"} 1.0' in text


async def test_metrics_stats_and_health(sidecar: Sidecar) -> None:
    client = sidecar.client()
    await client.chat.completions.create(**ask("What is the capital of France?"))
    await client.chat.completions.create(**ask("What's the capital city of France?"))
    async with aiohttp.ClientSession() as session:
        assert (await (await session.get(sidecar.url + "/healthz")).json()) == {"status": "ok"}
        text = await (await session.get(sidecar.url + "/metrics")).text()
        stats = await (await session.get(sidecar.url + "/stats")).json()
    assert 'semcache_requests_total{endpoint="/v1/chat/completions",outcome="hit"} 1.0' in text
    assert 'semcache_requests_total{endpoint="/v1/chat/completions",outcome="miss"} 1.0' in text
    assert 'semcache_tokens_saved_total{kind="prompt",tier="semantic"} 12.0' in text
    assert 'semcache_lookup_decisions_total{reason="semantic"} 1.0' in text
    assert "semcache_cost_saved_usd_total" in text
    assert (
        'semcache_upstream_requests_total{key="default",status="200",upstream="default"} 1.0'
        in text
    )
    assert stats["cache"]["entries"] == 1 and stats["cache"]["hits"] == 1


async def test_shadow_checks_estimate_the_false_hit_rate(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, shadow_fraction=1.0) as sidecar:
        client = sidecar.client()
        upstream.script = [
            Behaviour(answer="Paris is the capital of France."),
            Behaviour(answer="The capital of France is Paris."),  # the shadow check: agrees
            Behaviour(answer="Bananas are a yellow fruit rich in potassium."),  # disagrees
        ]
        await client.chat.completions.create(**ask("What is the capital of France?"))
        state = sidecar.app[STATE]
        for paraphrase in ("What's the capital city of France?", "What is France's capital city?"):
            hit = await client.chat.completions.with_raw_response.create(
                **ask(paraphrase), stream=True
            )
            assert hit.headers["X-Semcache"] == "hit"
            async for _ in hit.parse():
                pass
            await state.shadow.drain()
        checks = upstream.calls()[1:]
        assert len(checks) == 2
        assert all(not c.body.get("stream") and "stream_options" not in c.body for c in checks)
        assert all(c.headers["Authorization"] == "Bearer sk-tenant-one" for c in checks)
        async with aiohttp.ClientSession() as session:
            text = await (await session.get(sidecar.url + "/metrics")).text()
            stats = await (await session.get(sidecar.url + "/stats")).json()
        assert 'semcache_shadow_checks_total{verdict="agree"} 1.0' in text
        assert 'semcache_shadow_checks_total{verdict="disagree"} 1.0' in text
        assert "semcache_shadow_false_hit_rate 0.5" in text
        assert stats["shadow"] == {"fraction": 1.0, "checks": 2, "false_hit_rate": 0.5}


async def test_shadow_checks_are_off_by_default(sidecar: Sidecar) -> None:
    client = sidecar.client()
    await client.chat.completions.create(**ask("What is the capital of France?"))
    await client.chat.completions.create(**ask("What's the capital city of France?"))
    await sidecar.app[STATE].shadow.drain()
    assert len(sidecar.upstream.calls()) == 1


async def test_an_answer_is_stored_after_its_response_and_the_next_ask_waits_for_it(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    real_store = sidecar.cache.astore

    async def slow_store(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real_store(*args, **kwargs)

    monkeypatch.setattr(sidecar.cache, "astore", slow_store)
    client = sidecar.client()
    first = await asyncio.wait_for(
        client.chat.completions.with_raw_response.create(**ask("What is the capital of Peru?")),
        timeout=5,
    )
    assert first.headers["X-Semcache"] == "miss"  # answered while its store is still waiting
    assert len(sidecar.cache) == 0 and len(sidecar.app[STATE].after_response) == 1
    again = asyncio.ensure_future(
        client.chat.completions.with_raw_response.create(**ask("What is the capital of Peru?"))
    )
    other_scope = await asyncio.wait_for(
        sidecar.client(api_key="sk-tenant-two").chat.completions.with_raw_response.create(
            **ask("What is the capital of Chile?")
        ),
        timeout=5,
    )
    assert other_scope.headers["X-Semcache"] == "miss" and not again.done()
    release.set()
    second = await asyncio.wait_for(again, timeout=5)
    assert second.headers["X-Semcache"] == "hit"  # read your writes, in the same scope
    assert len(sidecar.upstream.calls()) == 2
