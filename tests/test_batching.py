"""Request batching: small independent prompts merged into one upstream call, every answer
returned to its own caller, anything doubtful sent again alone."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcache.batching import (
    PROTOCOLS,
    Cause,
    ChatProtocol,
    MessagesProtocol,
    Windows,
    new_ids,
    shares,
)
from semcache.batching import split as split_payload
from semcache.batching.merging import input_end
from semcache.budgets import parse_budgets
from semcache.server.state import STATE
from semcache.upstream.specs import parse_upstreams
from tests.conftest import CountingEmbedder
from tests.fake_openai import (
    BATCH_FAULTS,
    Behaviour,
    FakeOpenAI,
    _merged_answer,
    _merged_message,
    answer_to,
)
from tests.sidecar import MODEL, Sidecar, start_sidecar

# A shared system prompt long enough for merging to pay (sent once instead of eight times).
SYSTEM = "You translate English into French. Answer with the translation only. " + " ".join(
    f"Rule {i}: keep names, numbers, units and punctuation as they are, use the formal "
    "register unless the sentence is clearly informal, and never add explanations."
    for i in range(1, 9)
)
ALLOW = {"X-Semcache-Batch": "allow"}


def translate(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        **extra,
    }


PROMPTS = [
    "The cat sleeps on the warm windowsill.",
    "Our train leaves at seven tomorrow morning.",
    "Please close the door when you leave.",
    "The museum is closed on Mondays.",
    "She bought three apples and a loaf of bread.",
    "How far is the nearest pharmacy?",
    "I have never seen such a beautiful sunset.",
    "The meeting was moved to Thursday afternoon.",
]


CHAT = ChatProtocol()
member = CHAT.member


def split(answer: object, ids: list[str], inputs: list[str], **limit: Any) -> Any:
    """A chat completion of a merged call, split."""
    return split_payload(CHAT.payload(answer), ids, inputs, **limit)


def content(answer: dict[str, Any]) -> str:
    text: str = answer["choices"][0]["message"]["content"]
    return text


def owns(answer: dict[str, Any], prompt: str) -> bool:
    """Whether an answer was made for ``prompt``: the fake's answers end with the prompt."""
    return content(answer).endswith(": " + prompt)


# -- the core: who may join, the merged request, the split ---------------------------------


def test_only_single_questions_without_call_specific_fields_are_members() -> None:
    assert not isinstance(member(translate("Hello")), str)
    reasons = {
        "stream": translate("Hi", stream=True),
        "tools": translate("Hi", tools=[{"type": "function", "function": {"name": "f"}}]),
        "n": translate("Hi", n=2),
        "response_format": translate("Hi", response_format={"type": "json_object"}),
        "stop": translate("Hi", stop=["\n"]),
        "logprobs": translate("Hi", logprobs=True),
        "content": translate(" "),
    }
    for reason, body in reasons.items():
        assert member(body) == reason, reason
    conversation = translate("And now?")
    conversation["messages"][1:1] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut"},
    ]
    assert member(conversation) == "conversation"


def test_members_share_a_group_only_when_everything_but_the_prompt_is_equal() -> None:
    one, two = member(translate("Hello")), member(translate("Good night"))
    assert not isinstance(one, str) and not isinstance(two, str)
    assert one.group == two.group
    for other in (
        translate("Hello", temperature=0.2),
        {**translate("Hello"), "model": "gpt-4o"},
        {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]},
    ):
        joined = member(other)
        assert not isinstance(joined, str) and joined.group != one.group


def test_the_merged_request_sends_the_system_prompt_once_and_asks_for_a_checked_shape() -> None:
    members = [member(translate(p, max_tokens=50)) for p in PROMPTS[:3]]
    assert all(not isinstance(m, str) for m in members)
    ids = new_ids(3)
    body = CHAT.merged_request(members, ids)  # type: ignore[arg-type]
    assert sum(SYSTEM in orjson.dumps(m).decode() for m in body["messages"]) == 1
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    items = orjson.loads(body["messages"][-1]["content"])["items"]
    assert [i["input"] for i in items] == PROMPTS[:3] and [i["id"] for i in items] == ids
    schema = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"]["properties"]["answers"]["items"]["properties"]["id"]["enum"] == ids
    assert body["max_tokens"] > 3 * 50


def _completion(text: str | None, finish: str = "stop", refusal: str | None = None) -> Any:
    message = {"role": "assistant", "content": text, "refusal": refusal}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def _faulty(fault: str | None, prompts: list[str]) -> tuple[list[str], Any]:
    ids = new_ids(len(prompts))
    text, finish, refusal = _merged_answer(
        [{"id": i, "input": p} for i, p in zip(ids, prompts, strict=True)], fault
    )
    return ids, _completion(text, finish, refusal)


def test_a_well_formed_answer_is_split_item_by_item() -> None:
    ids, answer = _faulty(None, PROMPTS[:4])
    result = split(answer, ids, PROMPTS[:4])
    assert result.failed == {}
    assert [result.answers[i] for i in ids] == [answer_to(p) for p in PROMPTS[:4]]


@pytest.mark.parametrize("fault", BATCH_FAULTS)
def test_every_misbehaviour_sends_the_affected_items_alone(fault: str) -> None:
    prompts = PROMPTS[:4]
    ids, answer = _faulty(fault, prompts)
    result = split(answer, ids, prompts)
    assert result.failed, fault
    for item_id, prompt in zip(ids, prompts, strict=True):
        if item_id in result.answers:
            assert result.answers[item_id] == answer_to(prompt)
    expected = {
        "shuffle": Cause.SHUFFLED,
        "drop": Cause.MISSING,
        "duplicate": Cause.DUPLICATED,
        "extra": Cause.EXTRA,
        "swap": Cause.SHUFFLED,
        "truncate": Cause.TRUNCATED,
        "malformed": Cause.INVALID_JSON,
        "wrong_shape": Cause.MALFORMED,
        "refuse": Cause.REFUSAL,
        "empty": Cause.MALFORMED,
    }[fault]
    assert expected in result.failed.values()


def test_an_answer_under_its_id_but_quoting_another_input_is_refused() -> None:
    ids = new_ids(2)
    entries = [
        {"id": ids[0], "input_end": input_end(PROMPTS[1]), "answer": answer_to(PROMPTS[1])},
        {"id": ids[1], "input_end": input_end(PROMPTS[0]), "answer": answer_to(PROMPTS[0])},
    ]
    answer = _completion(orjson.dumps({"answers": entries}).decode())
    result = split(answer, ids, PROMPTS[:2])
    assert result.answers == {} and set(result.failed.values()) == {Cause.MISMATCHED}


def test_an_answer_longer_than_the_members_limit_goes_alone() -> None:
    ids, answer = _faulty(None, PROMPTS[:2])
    result = split(answer, ids, PROMPTS[:2], limit=3)
    assert set(result.failed.values()) == {Cause.TOO_LONG}


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(2, 8),
    seed=st.integers(0, 2**32 - 1),
    mutations=st.lists(
        st.sampled_from(["move", "drop", "copy", "relabel", "requote", "blank"]), max_size=6
    ),
)
def test_no_item_is_ever_given_an_answer_made_for_another(
    count: int, seed: int, mutations: list[str]
) -> None:
    """Entries moved, dropped, copied, given another item's id or another item's quote (one of
    the two: an entry whose id and quote both belong to another item is that item's entry):
    whatever is accepted was made for its own item."""
    rng = random.Random(seed)
    prompts = [f"Sentence number {i} about the {w} today." for i, w in enumerate(PROMPTS)][:count]
    ids = new_ids(count)
    entries: list[dict[str, Any]] = [
        {"id": i, "input_end": input_end(p), "answer": answer_to(p)}
        for i, p in zip(ids, prompts, strict=True)
    ]
    relabelled: set[int] = set()  # entries whose id or quote was changed (never both)
    for mutation in mutations:
        if not entries:
            break
        k = rng.randrange(len(entries))
        if mutation == "move":
            entries.insert(rng.randrange(len(entries)), entries.pop(k))
        elif mutation == "drop":
            entries.pop(k)
        elif mutation == "copy":
            entries.insert(rng.randrange(len(entries) + 1), dict(entries[k]))
        elif mutation in ("relabel", "requote") and id(entries[k]) not in relabelled:
            if mutation == "relabel":
                entries[k] = {**entries[k], "id": rng.choice(ids)}
            else:
                entries[k] = {**entries[k], "input_end": input_end(rng.choice(prompts))}
            relabelled.add(id(entries[k]))
        elif mutation == "blank":
            entries[k] = {**entries[k], "answer": ""}
    answer = _completion(orjson.dumps({"answers": entries}).decode())
    result = split(answer, ids, prompts)
    assert set(result.answers) | set(result.failed) == set(ids)
    for item_id, prompt in zip(ids, prompts, strict=True):
        if item_id in result.answers:
            assert result.answers[item_id] == answer_to(prompt)


@given(total=st.integers(0, 10**6), weights=st.lists(st.integers(0, 10**4), min_size=1))
def test_shares_add_up_and_follow_the_weights(total: int, weights: list[int]) -> None:
    parts = shares(total, weights)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    if sum(weights) > 0:
        for part, weight in zip(parts, weights, strict=True):
            assert abs(part - total * weight / sum(weights)) < 1


# -- the window ------------------------------------------------------------------------------


async def test_a_window_closes_when_full_or_when_its_time_is_up() -> None:
    calls: list[list[str]] = []

    async def send(items: Any) -> list[str]:
        calls.append(list(items))
        return [item.upper() for item in items]

    windows: Windows[str, str] = Windows(send, window_s=0.05, max_items=3)
    full = await asyncio.gather(*(windows.join("g", s) for s in "abc"))
    assert full == ["A", "B", "C"] and calls == [["a", "b", "c"]]
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(windows.join("g", "d"), windows.join("h", "e"))
    assert results == ["D", "E"] and calls[1:] == [["d"], ["e"]]
    assert loop.time() - started >= 0.045
    await windows.close()


async def test_a_failed_call_reaches_every_item_of_its_batch() -> None:
    async def send(items: Any) -> list[str]:
        raise RuntimeError("upstream gone")

    windows: Windows[str, str] = Windows(send, window_s=0.01, max_items=8)
    results = await asyncio.gather(
        windows.join("g", "a"), windows.join("g", "b"), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


# -- the sidecar -----------------------------------------------------------------------------


async def _ask_all(
    sidecar: Sidecar, bodies: list[dict[str, Any]], headers: list[dict[str, str]] | None = None
) -> list[tuple[int, Any, dict[str, str]]]:
    headers = headers or [ALLOW] * len(bodies)
    return await asyncio.gather(
        *(
            sidecar.post("/v1/chat/completions", orjson.dumps(b), h)
            for b, h in zip(bodies, headers, strict=True)
        )
    )


def _merged_calls(upstream: FakeOpenAI) -> list[Any]:
    return [
        c
        for c in upstream.calls()
        if (c.body.get("response_format") or {}).get("type") == "json_schema"
    ]


async def test_batchable_misses_share_one_call_and_each_gets_its_own_answer(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    upstream.default = Behaviour(prompt_tokens=0)  # usage counted with the tokenizer
    async with start_sidecar(
        tmp_path, embedder, upstream, batch_window_ms=300, batch_max_items=8
    ) as sidecar:
        replies = await _ask_all(sidecar, [translate(p) for p in PROMPTS])
        assert len(upstream.calls()) == 1
        merged = _merged_calls(upstream)[0].body
        assert sum(SYSTEM in str(m["content"]) for m in merged["messages"]) == 1
        batch_ids = set()
        prompt_total = completion_total = 0
        for (status, answer, headers), prompt in zip(replies, PROMPTS, strict=True):
            assert status == 200 and content(answer) == answer_to(prompt)
            batch_id, size = headers["X-Semcache-Batch"].split("/")
            batch_ids.add(batch_id)
            assert size == "8" and headers["X-Semcache"] == "miss"
            prompt_total += answer["usage"]["prompt_tokens"]
            completion_total += answer["usage"]["completion_tokens"]
        assert len(batch_ids) == 1
        # The members' usage adds up to the merged call's.
        assert prompt_total > 0 and completion_total > 0
        # Each answer is stored under its own request: asked again, each is a hit of its own.
        again = await _ask_all(sidecar, [translate(p) for p in PROMPTS])
        for (_, answer, headers), prompt in zip(again, PROMPTS, strict=True):
            assert headers["X-Semcache"] == "hit" and content(answer) == answer_to(prompt)
        assert len(upstream.calls()) == 1
        stats = await sidecar.get("/stats")
        assert stats["batching"]["merged_items"] == 8 and stats["batching"]["merged_calls"] == 1
        assert stats["batching"]["prompt_tokens_saved"] > 0
        metrics = await sidecar.get_text("/metrics")
        assert 'semcache_batch_items_total{outcome="merged"} 8.0' in metrics
        assert 'semcache_batch_calls_total{outcome="answered"} 1.0' in metrics


@pytest.mark.parametrize("fault", BATCH_FAULTS)
async def test_a_misbehaving_upstream_never_gives_anyone_another_callers_answer(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI, fault: str
) -> None:
    upstream.script = [Behaviour(batch_fault=fault)]  # the merged call; then well-behaved
    async with start_sidecar(
        tmp_path, embedder, upstream, batch_window_ms=300, batch_max_items=4
    ) as sidecar:
        prompts = PROMPTS[:4]
        replies = await _ask_all(sidecar, [translate(p) for p in prompts])
        fallbacks = 0
        for (status, answer, headers), prompt in zip(replies, prompts, strict=True):
            assert status == 200, answer
            assert owns(answer, prompt), (fault, prompt, content(answer))
            batch = headers["X-Semcache-Batch"]
            assert batch.split(";")[0].endswith("/4")
            if "; fallback=" in batch:
                fallbacks += 1
                assert batch.rsplit("=", 1)[1] in {c.value for c in Cause}
        assert fallbacks > 0
        assert len(upstream.calls()) == 1 + fallbacks
        # What was stored is each one's own answer.
        assert await _stored_answers_are_their_own(sidecar, prompts)


async def _stored_answers_are_their_own(sidecar: Sidecar, prompts: list[str]) -> bool:
    for _ in range(50):
        if len(sidecar.cache) == len(prompts):
            break
        await asyncio.sleep(0.05)
    again = await _ask_all(sidecar, [translate(p) for p in prompts])
    return all(
        headers["X-Semcache"] == "hit" and owns(answer, prompt)
        for (_, answer, headers), prompt in zip(again, prompts, strict=True)
    )


async def test_an_upstream_error_on_the_merged_call_sends_everyone_alone(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    upstream.script = [Behaviour(status=400)]
    async with start_sidecar(tmp_path, embedder, upstream, batch_window_ms=300) as sidecar:
        replies = await _ask_all(sidecar, [translate(p) for p in PROMPTS[:3]])
        for (status, answer, headers), prompt in zip(replies, PROMPTS[:3], strict=True):
            assert status == 200 and owns(answer, prompt)
            assert headers["X-Semcache-Batch"].endswith("; fallback=upstream_error")


async def test_requests_that_need_a_call_of_their_own_are_never_merged(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, batch_window_ms=200) as sidecar:
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
        bodies = [
            translate(PROMPTS[0], tools=tools),
            translate(PROMPTS[1], n=2),
            translate(PROMPTS[2]),
            translate(PROMPTS[3]),
        ]
        headers = [ALLOW, ALLOW, {**ALLOW, "X-Semcache-Priority": "high"}, {}]
        replies = await _ask_all(sidecar, bodies, headers)
        reasons = [h.get("X-Semcache-Batch") for _, _, h in replies]
        assert reasons == [
            "single; reason=tools",
            "single; reason=n",
            "single; reason=priority",
            None,  # not asked for
        ]
        assert _merged_calls(upstream) == []
        status, _, headers_ = await sidecar.post_stream(
            "/v1/chat/completions", orjson.dumps(translate(PROMPTS[4], stream=True)), ALLOW
        )
        assert status == 200 and headers_["X-Semcache-Batch"] == "single; reason=stream"
        status, answer, headers_ = await sidecar.post(
            "/v1/chat/completions", orjson.dumps(translate(PROMPTS[5])), ALLOW
        )
        assert headers_["X-Semcache-Batch"] == "single; reason=alone" and owns(answer, PROMPTS[5])
        status, answer, _ = await sidecar.post(
            "/v1/chat/completions", orjson.dumps(translate(PROMPTS[6])), {"X-Semcache-Batch": "x"}
        )
        assert status == 400 and "X-Semcache-Batch" in answer["error"]["message"]


async def test_requests_are_not_merged_when_merging_would_cost_more(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, batch_window_ms=300) as sidecar:
        short = [{"model": MODEL, "messages": [{"role": "user", "content": p}]} for p in PROMPTS]
        replies = await _ask_all(sidecar, short[:3])
        for (_, answer, headers), prompt in zip(replies, PROMPTS[:3], strict=True):
            assert headers["X-Semcache-Batch"] == "single; reason=no_saving"
            assert owns(answer, prompt)
        assert _merged_calls(upstream) == []


async def test_tenants_are_never_merged_into_one_call_by_default(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, batch_window_ms=300) as sidecar:
        keys = ["sk-tenant-a", "sk-tenant-b"] * 3
        headers = [{**ALLOW, "Authorization": f"Bearer {k}"} for k in keys]
        replies = await _ask_all(sidecar, [translate(p) for p in PROMPTS[:6]], headers)
        for (_, answer, _), prompt in zip(replies, PROMPTS[:6], strict=True):
            assert content(answer) == answer_to(prompt)
        calls = _merged_calls(upstream)
        assert len(calls) == 2
        assert sorted(c.key for c in calls) == ["sk-tenant-a", "sk-tenant-b"]


async def test_a_setting_turns_batching_on_per_model_and_a_header_turns_it_off(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(
        tmp_path, embedder, upstream, batch_window_ms=300, batch_models=f"{MODEL},other"
    ) as sidecar:
        replies = await _ask_all(sidecar, [translate(p) for p in PROMPTS[:3]], [{}, {}, {}])
        assert (
            all(h["X-Semcache-Batch"].endswith("/2") for _, _, h in replies[:2])
            or len(_merged_calls(upstream)) == 1
        )
        assert len(_merged_calls(upstream)) == 1
        denied = await _ask_all(
            sidecar,
            [translate(p) for p in PROMPTS[3:5]],
            [{"X-Semcache-Batch": "deny"}] * 2,
        )
        assert all("X-Semcache-Batch" not in h for _, _, h in denied)
        assert len(_merged_calls(upstream)) == 1


async def test_the_merged_calls_cost_is_shared_by_the_tenants_budgets(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    upstream.default = Behaviour(prompt_tokens=0)
    specs = parse_upstreams([{"name": "pool", "base_url": upstream.url, "api_keys": ["k1"]}], {})
    async with start_sidecar(
        tmp_path,
        embedder,
        upstream,
        upstreams=specs,
        batch_window_ms=300,
        batch_across_tenants=True,
        budgets=parse_budgets({"daily_usd": 100.0}),
    ) as sidecar:
        keys = ["sk-a", "sk-b", "sk-b", "sk-b"]
        headers = [{**ALLOW, "Authorization": f"Bearer {k}"} for k in keys]
        replies = await _ask_all(sidecar, [translate(p) for p in PROMPTS[:4]], headers)
        for (_, answer, headers_), prompt in zip(replies, PROMPTS[:4], strict=True):
            assert content(answer) == answer_to(prompt) and headers_["X-Semcache-Batch"]
        calls = _merged_calls(upstream)
        assert len(calls) == 1 and calls[0].key == "k1"
        ledger = sidecar.app[STATE].ledger
        assert ledger is not None
        from semcache.server.controls import tenant_of

        a = tenant_of({"Authorization": "Bearer sk-a"}, None)
        b = tenant_of({"Authorization": "Bearer sk-b"}, None)
        assert a is not None and b is not None
        spent_a, spent_b = ledger.spent(a, "day"), ledger.spent(b, "day")
        total = ledger.spent("global", "day")
        assert spent_a > 0 and spent_b > 2 * spent_a
        assert spent_a + spent_b == pytest.approx(total, rel=1e-3)


# -- Anthropic Messages ----------------------------------------------------------------------

CLAUDE = "claude-3-5-haiku-20241022"
MESSAGES = MessagesProtocol()


def note(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 200,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def test_messages_requests_merge_through_one_forced_tool_call() -> None:
    assert PROTOCOLS["messages"] is not None
    joined = [MESSAGES.member(note(p)) for p in PROMPTS[:3]]
    assert all(not isinstance(m, str) for m in joined)
    assert MESSAGES.member(note("Hi", stream=True)) == "stream"
    assert MESSAGES.member(note("Hi", thinking={"type": "enabled", "budget_tokens": 1024})) == (
        "thinking"
    )
    two_turns = note("And?")
    two_turns["messages"][0:0] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    assert MESSAGES.member(two_turns) == "conversation"
    ids = new_ids(3)
    body = MESSAGES.merged_request(joined, ids)  # type: ignore[arg-type]
    assert body["system"][0] == {"type": "text", "text": SYSTEM}
    assert body["tool_choice"] == {"type": "tool", "name": body["tools"][0]["name"]}
    assert body["tools"][0]["input_schema"]["properties"]["answers"]
    assert body["max_tokens"] > 3 * 200
    for fault in BATCH_FAULTS:
        content, stop = _merged_message(
            [{"id": i, "input": p} for i, p in zip(ids, PROMPTS[:3], strict=True)], fault
        )
        answer = {"content": content, "stop_reason": stop}
        result = split_payload(MESSAGES.payload(answer), ids, PROMPTS[:3])
        assert result.failed, fault
        for item_id, prompt in zip(ids, PROMPTS[:3], strict=True):
            assert result.answers.get(item_id, answer_to(prompt)) == answer_to(prompt)


@pytest.mark.parametrize("fault", [None, "swap", "truncate", "malformed"])
async def test_messages_callers_each_get_their_own_answer(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI, fault: str | None
) -> None:
    upstream.script = [Behaviour(batch_fault=fault)]
    async with start_sidecar(tmp_path, embedder, upstream, batch_window_ms=300) as sidecar:
        prompts = PROMPTS[:4]
        replies = await asyncio.gather(
            *(sidecar.post("/v1/messages", orjson.dumps(note(p)), ALLOW) for p in prompts)
        )
        merged = [
            c for c in upstream.calls("/v1/messages") if c.body.get("tool_choice") is not None
        ]
        assert len(merged) == 1
        fallbacks = 0
        for (status, answer, headers), prompt in zip(replies, prompts, strict=True):
            assert status == 200 and answer["type"] == "message"
            text = answer["content"][0]["text"]
            assert text.endswith(": " + prompt), (fault, text)
            assert headers["X-Semcache-Batch"].split(";")[0].endswith("/4")
            fallbacks += "fallback=" in headers["X-Semcache-Batch"]
        assert (fallbacks > 0) == (fault is not None)
