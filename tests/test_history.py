"""Follow-ups under reworded history (``history_match = "meaning"``), through the sidecar over
a fake upstream: a follow-up after a reworded first question is answered from the cache, and
never after another question or another answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from semcache.errors import ConfigError
from semcache.history import recognised_turns
from semcache.keys import CacheRequest
from semcache.settings import ServerConfig
from tests.fake_openai import FakeOpenAI
from tests.sidecar import MODEL, Sidecar, start_sidecar

FIRST = "What is the tallest mountain in the world?"
REWORDED = "Which mountain is the tallest in the world?"
OTHER = "What is the longest river in the world?"
FOLLOW_UP = "How long does it take to climb it?"


def chat(*turns: str) -> bytes:
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return orjson.dumps({"model": MODEL, "messages": messages})


async def ask(sidecar: Sidecar, *turns: str) -> tuple[str, str]:
    """X-Semcache and the answer's text."""
    status, body, headers = await sidecar.post("/v1/chat/completions", chat(*turns))
    assert status == 200, body
    return headers["X-Semcache"], body["choices"][0]["message"]["content"]


async def conversation(sidecar: Sidecar) -> tuple[str, str]:
    """The first conversation, asked and cached: its first answer and its follow-up's."""
    assert (await ask(sidecar, FIRST))[0] == "miss"
    first = (await ask(sidecar, FIRST))[1]
    outcome, follow_up = await ask(sidecar, FIRST, first, FOLLOW_UP)
    assert outcome == "miss"
    return first, follow_up


async def test_a_follow_up_after_a_reworded_question_is_served_from_the_cache(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, history_match="meaning") as sidecar:
        first, follow_up = await conversation(sidecar)
        # The reworded question is a hit on the first, served its answer ...
        assert await ask(sidecar, REWORDED) == ("hit", first)
        calls = len(upstream.calls())
        # ... so the conversation goes on after the same answer: its follow-up is a hit too.
        assert await ask(sidecar, REWORDED, first, FOLLOW_UP) == ("hit", follow_up)
        assert len(upstream.calls()) == calls
        # The upstream still gets the conversation as the client wrote it.
        outcome, _ = await ask(sidecar, REWORDED, first, "And who climbed it first?")
        assert outcome == "miss"
        assert upstream.calls()[-1].body["messages"][0]["content"] == REWORDED


async def test_a_follow_up_is_never_served_after_another_question_or_another_answer(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, history_match="meaning") as sidecar:
        first, _ = await conversation(sidecar)
        assert (await ask(sidecar, OTHER))[0] == "miss"
        # Another first question, even after the very same answer text: not the same turn.
        assert (await ask(sidecar, OTHER, first, FOLLOW_UP))[0] == "miss"
        # The same question reworded, but another answer came back: not the same conversation.
        assert (await ask(sidecar, REWORDED, "It is K2.", FOLLOW_UP))[0] == "miss"


async def test_by_default_earlier_turns_must_match_byte_for_byte(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream) as sidecar:
        first, _ = await conversation(sidecar)
        assert (await ask(sidecar, REWORDED))[0] == "hit"
        assert (await ask(sidecar, REWORDED, first, FOLLOW_UP))[0] == "miss"


async def test_long_conversations_are_keyed_verbatim() -> None:
    """Each earlier user turn costs a lookup: past ``max_user_turns`` none is made."""
    looked_up: list[str] = []

    async def lookup(request: CacheRequest) -> Any:
        looked_up.append(request.prompt)
        raise AssertionError("no lookup expected")

    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"t{i}"} for i in range(7)]
    assert await recognised_turns(turns, lambda t: None, lookup, max_user_turns=3) is None
    assert looked_up == []


def test_the_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="history_match"):
        ServerConfig(history_match="fuzzy")
    with pytest.raises(ConfigError, match="history_match_turns"):
        ServerConfig(history_match_turns=0)


async def test_anthropic_messages_follow_ups_after_a_reworded_question(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    headers = {"x-api-key": "sk-ant-one", "anthropic-version": "2023-06-01"}

    async def ask_claude(sidecar: Sidecar, *turns: str) -> tuple[str, str]:
        roles = ("user", "assistant")
        messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
        body = {"model": "claude-3-5-haiku-latest", "max_tokens": 100, "messages": messages}
        status, answer, got = await sidecar.post("/v1/messages", orjson.dumps(body), headers)
        assert status == 200, answer
        return got["X-Semcache"], answer["content"][0]["text"]

    async with start_sidecar(tmp_path, embedder, upstream, history_match="meaning") as sidecar:
        first = (await ask_claude(sidecar, FIRST))[1]
        outcome, follow_up = await ask_claude(sidecar, FIRST, first, FOLLOW_UP)
        assert outcome == "miss"
        assert await ask_claude(sidecar, REWORDED, first, FOLLOW_UP) == ("hit", follow_up)
        assert (await ask_claude(sidecar, OTHER, first, FOLLOW_UP))[0] == "miss"


async def test_earlier_turns_the_cache_cannot_read_are_kept_as_they_are(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    """An earlier user turn with an image part has no cache request of its own: it is keyed
    verbatim, and the request is answered as usual."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": FIRST}, image]},
        {"role": "assistant", "content": "Everest."},
        {"role": "user", "content": FOLLOW_UP},
    ]
    body = orjson.dumps({"model": MODEL, "messages": messages})
    async with start_sidecar(tmp_path, embedder, upstream, history_match="meaning") as sidecar:
        assert (await ask(sidecar, FIRST))[0] == "miss"
        for expected in ("miss", "hit"):
            status, answer, headers = await sidecar.post("/v1/chat/completions", body)
            assert status == 200, answer
            assert headers["X-Semcache"] == expected
