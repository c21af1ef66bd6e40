"""The two newer API shapes, end to end with their official SDKs: OpenAI's Responses API
(``openai``) and Anthropic's Messages API (``anthropic``), through the sidecar to a fake that
speaks them. Same guarantees as chat: paraphrase hits, streamed hits the SDK parses into the
same text, tenants apart, cut streams never stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import openai
import pytest

from semcache.upstream.specs import parse_upstreams
from tests.conftest import CountingEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.sidecar import MODEL, Sidecar, start_sidecar

CLAUDE = "claude-haiku-4-5"


def responses_client(sidecar: Sidecar, key: str = "sk-tenant-one") -> openai.AsyncOpenAI:
    client = sidecar.client(key)
    sidecar.clients.append(client)
    return client


@pytest.fixture
async def claude(sidecar: Sidecar) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="sk-ant-one", max_retries=0)
    yield client
    await client.close()


# -- OpenAI Responses ---------------------------------------------------------------------


async def test_responses_paraphrase_hit(sidecar: Sidecar) -> None:
    client = responses_client(sidecar)
    first = await client.responses.with_raw_response.create(
        model=MODEL, input="What is the capital of France?"
    )
    assert first.headers["X-Semcache"] == "miss"
    text = first.parse().output_text
    second = await client.responses.with_raw_response.create(
        model=MODEL, input=[{"role": "user", "content": "What's the capital city of France?"}]
    )
    assert second.headers["X-Semcache"] == "hit"
    assert second.parse().output_text == text
    assert len(sidecar.upstream.calls("/v1/responses")) == 1


async def test_responses_streamed_hit_parses_into_the_same_text(sidecar: Sidecar) -> None:
    client = responses_client(sidecar)
    stream = await client.responses.create(
        model=MODEL, input="How many legs does a spider have?", stream=True
    )
    streamed = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
    assert streamed.startswith("Response #1 to:")
    replay = await client.responses.create(
        model=MODEL, input="How many legs do spiders have?", stream=True
    )
    events = [event async for event in replay]
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == streamed == events[-1].response.output_text
    assert len(sidecar.upstream.calls("/v1/responses")) == 1


async def test_responses_tenants_apart_and_continuations_bypass(sidecar: Sidecar) -> None:
    one, two = responses_client(sidecar, "sk-one"), responses_client(sidecar, "sk-two")
    await one.responses.create(model=MODEL, input="What is the capital of France?")
    other = await two.responses.with_raw_response.create(
        model=MODEL, input="What is the capital of France?"
    )
    assert other.headers["X-Semcache"] == "miss"
    chained = await one.responses.with_raw_response.create(
        model=MODEL, input="What is the capital of France?", previous_response_id="resp_x"
    )
    assert chained.headers["X-Semcache"] == "bypass"
    assert len(sidecar.upstream.calls("/v1/responses")) == 3


async def test_responses_in_a_stored_conversation_bypass(sidecar: Sidecar) -> None:
    """A conversation kept upstream prepends its items to the input and takes the answer in:
    the same question later in it has another context, and an answer served from the cache
    would be missing from it."""
    client = responses_client(sidecar)
    for _ in range(2):
        answer = await client.responses.with_raw_response.create(
            model=MODEL, input="And what about the second one?", conversation="conv_x"
        )
        assert answer.headers["X-Semcache"] == "bypass"
    assert len(sidecar.upstream.calls("/v1/responses")) == 2
    assert len(sidecar.cache) == 0


async def test_responses_with_a_stored_prompt_are_cached_only_at_a_pinned_version(
    sidecar: Sidecar,
) -> None:
    """A stored prompt named without a version is its latest one, which may change upstream at
    any time: an answer made with the old one would be served after the edit."""
    client = responses_client(sidecar)
    kinds = []
    for prompt in ({"id": "pmpt_x"}, {"id": "pmpt_x"}, {"id": "pmpt_x", "version": "2"}) * 2:
        answer = await client.responses.with_raw_response.create(
            model=MODEL, input="What is the capital of France?", prompt=prompt
        )
        kinds.append(answer.headers["X-Semcache"])
    assert kinds == ["bypass", "bypass", "miss", "bypass", "bypass", "hit"]


async def test_a_cut_responses_stream_is_not_stored(sidecar: Sidecar) -> None:
    client = responses_client(sidecar)
    sidecar.upstream.script = [Behaviour(cut_after_chunks=4)]
    stream = await client.responses.create(
        model=MODEL, input="Tell me about the moon please", stream=True
    )
    events = [event async for event in stream]
    # The Responses API reports a failed stream as an "error" event, which the SDK yields.
    assert events[-1].type == "error" and events[-1].code == "stream_interrupted"
    assert len(sidecar.cache) == 0


# -- Anthropic Messages --------------------------------------------------------------------


async def test_messages_paraphrase_hit(sidecar: Sidecar, claude: anthropic.AsyncAnthropic) -> None:
    first = await claude.messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=100,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert first.headers["X-Semcache"] == "miss"
    text = (await first.parse()).content[0].text  # type: ignore[union-attr]
    second = await claude.messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=100,
        messages=[{"role": "user", "content": "What's the capital city of France?"}],
    )
    assert second.headers["X-Semcache"] == "hit"
    assert (await second.parse()).content[0].text == text  # type: ignore[union-attr]
    seen = sidecar.upstream.calls("/v1/messages")
    assert len(seen) == 1
    # The SDK's key reaches the upstream as the SDK sent it (x-api-key, or a bearer token in
    # newer versions), with its anthropic-version.
    sent = seen[0].headers
    assert "sk-ant-one" in (sent.get("x-api-key", ""), sent.get("Authorization", "")[7:])
    assert "anthropic-version" in sent


async def test_messages_streamed_hit_parses_into_the_same_text(
    sidecar: Sidecar, claude: anthropic.AsyncAnthropic
) -> None:
    async with claude.messages.stream(
        model=CLAUDE,
        max_tokens=100,
        messages=[{"role": "user", "content": "How many legs does a spider have?"}],
    ) as stream:
        streamed = await stream.get_final_text()
    async with claude.messages.stream(
        model=CLAUDE,
        max_tokens=100,
        messages=[{"role": "user", "content": "How many legs do spiders have?"}],
    ) as replay:
        pieces = [text async for text in replay.text_stream]
        final = await replay.get_final_message()
    assert "".join(pieces) == streamed == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert len(sidecar.upstream.calls("/v1/messages")) == 1


async def test_messages_tenants_apart_and_cut_streams_not_stored(sidecar: Sidecar) -> None:
    one = anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="sk-ant-one", max_retries=0)
    two = anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="sk-ant-two", max_retries=0)
    asked = [{"role": "user", "content": "What is the capital of France?"}]
    try:
        await one.messages.create(model=CLAUDE, max_tokens=50, messages=asked)  # type: ignore[arg-type]
        other = await two.messages.with_raw_response.create(
            model=CLAUDE,
            max_tokens=50,
            messages=asked,  # type: ignore[arg-type]
        )
        assert other.headers["X-Semcache"] == "miss"
        await sidecar.settled()
        stored = len(sidecar.cache)
        sidecar.upstream.script = [Behaviour(cut_after_chunks=4)]
        with pytest.raises(anthropic.APIError):
            async with one.messages.stream(
                model=CLAUDE,
                max_tokens=50,
                messages=[{"role": "user", "content": "Tell me about the moon"}],
            ) as stream:
                await stream.get_final_text()
        await sidecar.settled()
        assert len(sidecar.cache) == stored
    finally:
        await one.close()
        await two.close()


async def test_an_anthropic_pool_key_replaces_the_callers(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    specs = parse_upstreams(
        [
            {"name": "claude", "kind": "anthropic", "base_url": upstream.url,
             "api_keys": ["sk-ant-pool"]},
            {"name": "gpt", "kind": "openai", "base_url": upstream.url, "api_keys": ["sk-pool"]},
        ],
        {},
    )  # fmt: skip
    async with start_sidecar(tmp_path, embedder, upstream, upstreams=specs) as sidecar:
        client = anthropic.AsyncAnthropic(
            base_url=sidecar.url, api_key="sk-ant-caller", max_retries=0
        )
        try:
            raw = await client.messages.with_raw_response.create(
                model=CLAUDE,
                max_tokens=50,
                messages=[{"role": "user", "content": "Hello there, who are you?"}],
            )
        finally:
            await client.close()
        assert raw.headers["X-Semcache-Upstream"] == "claude"
        seen = upstream.calls("/v1/messages")[0].headers
        assert seen["x-api-key"] == "sk-ant-pool"
        assert "Authorization" not in seen and "sk-ant-caller" not in str(seen)
        status, _, headers = await sidecar.post(
            "/v1/chat/completions",
            b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi there you"}]}',
        )
        assert status == 200 and headers["X-Semcache-Upstream"] == "gpt"
