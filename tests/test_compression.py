"""Context compression: each mode on real conversations, what is always sent verbatim, the
stable prefix, recall of what the last turn refers to, summaries and their failure, and the
sidecar sending the compressed history while storing under the request as the client sent it."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcache.compression import CompressionSettings, Compressor, Mode, Summaries
from semcache.compression.compressor import RECALLED
from semcache.compression.history import count_history, message_tokens
from semcache.compression.texts import kept_units, names_in, units_of
from semcache.embedding import SentenceTransformerEmbedder
from tests.conftest import WordHashEmbedder
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.sidecar import MODEL, start_sidecar

DATA = Path(__file__).resolve().parent / "data" / "conversations_sample.jsonl"
SYSTEM = {"role": "system", "content": "You are the support assistant of Acme Tools."}
TOOLS_TURN = [
    {"role": "user", "content": "Where is my parcel?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "track", "arguments": '{"parcel": "P-88"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "in transit"}'},
    {"role": "assistant", "content": "Your parcel is in transit."},
]
IMAGE_MESSAGE = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ],
}


def conversations() -> list[list[dict[str, Any]]]:
    with open(DATA) as file:
        return [json.loads(line)["messages"] for line in file]


def long_conversation(count: int = 8, *, tools: bool = False) -> list[dict[str, Any]]:
    """Real conversations chained into one of several thousand tokens, a question last."""
    messages: list[dict[str, Any]] = [dict(SYSTEM)]
    for i, conversation in enumerate(conversations()[:count]):
        messages += [dict(m) for m in conversation]
        if tools and i == 1:
            messages += [dict(m) for m in TOOLS_TURN] + [dict(IMAGE_MESSAGE)]
            messages.append({"role": "assistant", "content": "A cat on a sofa."})
    messages.append({"role": "user", "content": "Thanks. Can you sum up what we discussed?"})
    return messages


def dumps(message: Mapping[str, Any]) -> bytes:
    return orjson.dumps(message)


def tail(messages: Sequence[Mapping[str, Any]], turns: int) -> list[bytes]:
    starts = [i for i, m in enumerate(messages) if m["role"] == "user"]
    return [dumps(m) for m in messages[starts[-turns] :]]


def stand_in_summariser(calls: list[int]) -> Any:
    async def summarise(request: list[dict[str, str]], max_tokens: int) -> str:
        calls.append(max_tokens)
        return f"summary number {len(calls)} of {len(request[-1]['content'])} characters"

    return summarise


@pytest.fixture
def compressor() -> Compressor:
    return Compressor(WordHashEmbedder())


@pytest.mark.parametrize("mode", [Mode.WINDOW, Mode.EXTRACTIVE, Mode.SUMMARY])
async def test_each_mode_sends_fewer_tokens_and_keeps_head_tail_and_tools_verbatim(
    compressor: Compressor, mode: Mode
) -> None:
    messages = long_conversation(tools=True)
    original = [dumps(m) for m in messages]
    calls: list[int] = []
    result = await compressor.acompress(messages, mode, summarise=stand_in_summariser(calls))
    assert [dumps(m) for m in messages] == original  # the caller's list is not touched
    assert result.applied is mode
    assert result.original_tokens == count_history(messages) > 4000
    assert result.sent_tokens == count_history(result.messages) < result.original_tokens
    sent = [dumps(m) for m in result.messages]
    assert sent[0] == dumps(SYSTEM)
    keep = compressor.settings.keep_turns
    assert sent[-len(tail(messages, keep)) :] == tail(messages, keep)
    for message in [*TOOLS_TURN[1:3], IMAGE_MESSAGE]:  # tool call, its result, an image
        assert dumps(message) in sent
    call = sent.index(dumps(TOOLS_TURN[1]))
    assert sent[call + 1] == dumps(TOOLS_TURN[2])  # the result still follows its call
    if mode is Mode.SUMMARY:
        assert calls and result.summarised_blocks == len(calls)
        assert any("Summary of earlier turns" in str(m["content"]) for m in result.messages)
    if mode is Mode.EXTRACTIVE:
        assert any("[…]" in str(m["content"]) for m in result.messages)


def test_a_short_history_is_sent_as_it_came(compressor: Compressor) -> None:
    messages = [dict(SYSTEM), *conversations()[0][:3]]
    assert count_history(messages) < compressor.settings.min_tokens
    result = compressor.compress(messages, Mode.EXTRACTIVE)
    assert result.applied is Mode.OFF
    assert [dumps(m) for m in result.messages] == [dumps(m) for m in messages]
    assert result.sent_tokens == result.original_tokens


def test_off_sends_everything(compressor: Compressor) -> None:
    messages = long_conversation()
    result = compressor.compress(messages, Mode.OFF)
    assert result.applied is Mode.OFF and result.messages == messages


def test_window_drops_the_oldest_blocks_under_the_budget() -> None:
    compressor = Compressor(None, CompressionSettings(budget_tokens=2048))
    messages = long_conversation()
    result = compressor.compress(messages, Mode.WINDOW)
    assert result.dropped_blocks >= 1
    assert result.sent_tokens <= 2048 + 300  # the note and a block's last turn at most
    assert "Earlier turns of this conversation are omitted" in result.messages[1]["content"]
    kept = [dumps(m) for m in result.messages[2:]]
    originals = [dumps(m) for m in messages]
    assert kept == originals[-len(kept) :]  # the newest turns, untouched and in order


def replay(
    compressor: Compressor, conversation: list[dict[str, Any]], mode: Mode
) -> list[list[dict[str, Any]]]:
    sent = []
    for i, message in enumerate(conversation):
        if message["role"] == "user":
            request = conversation[: i + 1]
            sent.append(compressor.compress(request, mode, embed_limit=0).messages)
    return sent


def shared_tokens(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int:
    tokens = 0
    for x, y in zip(a, b, strict=False):
        if dumps(x) != dumps(y):
            break
        tokens += message_tokens(x)
    return tokens


@pytest.mark.parametrize("mode", [Mode.WINDOW, Mode.EXTRACTIVE])
def test_consecutive_turns_share_their_prefix(mode: Mode) -> None:
    """Blocks close at fixed places and a closed block is cut the same way every turn, so a
    request starts with the previous request's compressed history, byte for byte."""
    conversation = long_conversation(12)[:-1]
    sent = replay(Compressor(WordHashEmbedder()), conversation, mode)
    pairs = [(a, b) for a, b in itertools.pairwise(sent) if count_history(a) >= 1024]
    reused = sum(shared_tokens(a, b) >= 1024 for a, b in pairs)
    assert len(pairs) >= 20
    assert reused / len(pairs) >= 0.75
    # A fresh compressor (another sidecar, a restart) cuts the same history the same way.
    again = replay(Compressor(WordHashEmbedder()), conversation, mode)
    assert [[dumps(m) for m in s] for s in again] == [[dumps(m) for m in s] for s in sent]


FACTS = [
    ("By the way, my order number is QX-58213-7.", "What was my order number again?", "QX-58213-7"),
    ("Also, my name is Rosalind Okafor.", "Do you still remember my name?", "Rosalind Okafor"),
    ("I'm allergic to penicillin, keep that in mind.", "What am I allergic to?", "penicillin"),
    # Other scripts: their words were invisible to the lexical match (ASCII only), and the
    # model is English-only, so nothing found them.
    ("Кстати, мой номер заказа — QX-58213-7.", "Какой у меня номер заказа?", "QX-58213-7"),
    ("У меня аллергия на пенициллин.", "На что у меня аллергия?", "пенициллин"),
    ("我叫王小明。", "我叫什么名字？", "王小明"),
    ("Je m'appelle Hélène Dupré.", "Comment je m'appelle, déjà ?", "Hélène Dupré"),
]


@pytest.mark.parametrize(("plant", "question", "fact"), FACTS)
@pytest.mark.parametrize("mode", [Mode.WINDOW, Mode.EXTRACTIVE])
def test_a_fact_the_last_turn_asks_for_reaches_the_upstream(
    model: SentenceTransformerEmbedder, mode: Mode, plant: str, question: str, fact: str
) -> None:
    """A fact from the first turns, inside a longer message, is sent when the last message
    asks for it: kept by the cut, or recalled (in place, or after the note of dropped blocks)."""
    messages = long_conversation(10)
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    long_text = " ".join(m["content"] for m in conversations()[3] if m["role"] == "assistant")
    messages[first_user] = {"role": "user", "content": f"{long_text}\n\n{plant} Thanks!"}
    messages[-1] = {"role": "user", "content": question}
    compressor = Compressor(model, CompressionSettings(budget_tokens=3000))
    result = compressor.compress(messages, mode)
    assert result.applied is mode
    assert fact in orjson.dumps(result.messages).decode()
    # Whatever is recalled goes in one note before the last turns: everything before it is
    # what an unrelated question gets, so the provider's cached prefix is kept.
    messages[-1] = {"role": "user", "content": "Write a haiku about autumn leaves."}
    other = compressor.compress(messages, mode)
    assert other.recalled == 0
    notes = [m for m in result.messages if str(m["content"]).startswith(RECALLED)]
    if mode is Mode.WINDOW:  # the fact was dropped with its block and recalled for the question
        assert result.dropped_blocks >= 1 and result.recalled >= 1 and len(notes) == 1
        assert fact not in orjson.dumps(other.messages).decode()
    assert [m for m in result.messages[:-1] if m not in notes] == other.messages[:-1]


async def test_summaries_are_written_once_per_block_and_reused() -> None:
    store: dict[str, Any] = {}
    calls: list[int] = []
    compressor = Compressor(None, summaries=Summaries(store))
    conversation = long_conversation(10)
    requests = [conversation[: i + 1] for i, m in enumerate(conversation) if m["role"] == "user"]
    results = [
        await compressor.acompress(r, Mode.SUMMARY, summarise=stand_in_summariser(calls))
        for r in requests
    ]
    closed = max(r.summarised_blocks for r in results)
    assert closed >= 2 and len(calls) == closed == len(store)
    # Another sidecar sharing the store writes none.
    other = Compressor(None, summaries=Summaries(store))
    more: list[int] = []
    again = await other.acompress(requests[-1], Mode.SUMMARY, summarise=stand_in_summariser(more))
    assert more == [] and again.messages == results[-1].messages


async def test_concurrent_requests_share_one_summary_call() -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def slow(request: list[dict[str, str]], max_tokens: int) -> str:
        calls.append(max_tokens)
        await gate.wait()
        return "the summary"

    compressor = Compressor(None)
    messages = long_conversation(4)
    tasks = [
        asyncio.create_task(compressor.acompress(messages, Mode.SUMMARY, summarise=slow))
        for _ in range(3)
    ]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks)
    blocks = results[0].summarised_blocks
    assert blocks >= 1 and len(calls) == blocks
    assert results[0].messages == results[1].messages == results[2].messages


@pytest.mark.parametrize("failure", ["error", "timeout", "empty"])
async def test_a_failed_summary_falls_back_to_extractive(failure: str) -> None:
    async def failing(request: list[dict[str, str]], max_tokens: int) -> str:
        if failure == "timeout":
            await asyncio.sleep(5)
        if failure == "error":
            raise ConnectionError("upstream down")
        return "   "

    compressor = Compressor(None, CompressionSettings(summary_timeout_s=0.2))
    messages = long_conversation(6)
    result = await compressor.acompress(messages, Mode.SUMMARY, summarise=failing)
    extractive = compressor.compress(messages, Mode.EXTRACTIVE)
    assert result.fallback is not None and result.summarised_blocks == 0
    assert result.messages == extractive.messages
    assert result.sent_tokens < result.original_tokens
    assert len(compressor.summaries.store) == 0  # nothing kept: tried again next time


def test_anthropic_messages_keep_tool_blocks_and_add_notes_as_user() -> None:
    tool_use = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "tu_1", "name": "track", "input": {"parcel": "P-88"}},
        ],
    }
    tool_result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "in transit"}],
    }
    messages = long_conversation(10)[1:]  # Anthropic: the system prompt is not a message
    messages[4:4] = [{"role": "user", "content": "Where is P-88?"}, tool_use, tool_result]
    compressor = Compressor(None, CompressionSettings(budget_tokens=2500))
    result = compressor.compress(messages, Mode.EXTRACTIVE, note_role="user")
    sent = [dumps(m) for m in result.messages]
    assert result.dropped_blocks >= 1
    assert result.messages[0]["role"] == "user"  # the note of dropped turns
    assert sent.index(dumps(tool_use)) + 1 == sent.index(dumps(tool_result))
    assert all(m["role"] in ("user", "assistant") for m in result.messages)


ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "x"])
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=400
)
PROSE = st.lists(
    st.sampled_from(
        ["The order 4411 shipped.", "Alice wrote `run_all()`.", "```\ncode()\n```", "- item",
         "Why?", "Это тест.", "これはテストです。", "\n\n", "https://x.org/a", "e.g. Dr. No"]
    ),
    max_size=60,
).map(" ".join)  # fmt: skip
CONTENT = st.one_of(
    TEXT,
    PROSE,
    st.none(),
    st.integers(),
    st.lists(st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": PROSE}),
                       st.dictionaries(st.text(max_size=5), TEXT, max_size=3)), max_size=3),
)  # fmt: skip
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLES, "content": CONTENT}),
    st.fixed_dictionaries({"role": ROLES, "content": CONTENT, "tool_calls": st.just([])}),
    st.dictionaries(st.text(max_size=8), TEXT, max_size=3),
)


@settings(
    max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
@given(st.lists(MESSAGE, max_size=40), st.sampled_from(list(Mode)))
def test_any_history_is_compressed_without_error_or_loss_of_what_must_stay(
    messages: list[dict[str, Any]], mode: Mode
) -> None:
    compressor = Compressor(
        WordHashEmbedder(), CompressionSettings(min_tokens=50, budget_tokens=200, block_tokens=40)
    )
    result = compressor.compress(messages, mode)
    assert result.sent_tokens <= result.original_tokens
    sent = {dumps(m) for m in result.messages}
    for message in messages:
        plain = message.get("role") in ("user", "assistant") and not (
            {"tool_calls", "function_call", "tool_call_id"} & message.keys()
        )
        if not plain:
            assert dumps(message) in sent  # system, tools, other roles, odd shapes: verbatim


# -- in the sidecar ----------------------------------------------------------------------------


def chat(messages: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": messages, **extra})


async def test_the_sidecar_sends_the_compressed_history_and_stores_under_the_original(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    messages = long_conversation(10)
    async with start_sidecar(tmp_path, embedder, upstream, compression="extractive") as sidecar:
        upstream.default = Behaviour(prompt_tokens=2000, cached_tokens=1024)
        status, _, headers = await sidecar.post_stream(
            "/v1/chat/completions", chat(messages, stream=True)
        )
        assert status == 200 and headers["X-Semcache"] == "miss"
        assert headers["X-Semcache-Compression"] == "extractive"
        original, sent = map(int, headers["X-Semcache-Prompt-Tokens"].split("->"))
        assert original == count_history(messages) and sent < original
        received = upstream.calls()[-1].body
        assert count_history(received["messages"]) == sent
        assert received["messages"][0] == SYSTEM and received["messages"][-1] == messages[-1]
        # Stored (once the stream has ended) under the request as the client sent it: asking
        # it again is an exact hit.
        for _ in range(100):
            if len(sidecar.cache):
                break
            await asyncio.sleep(0.05)
        status, _, headers = await sidecar.post("/v1/chat/completions", chat(messages))
        assert status == 200 and headers["X-Semcache"] == "hit"
        assert len(upstream.calls()) == 1
        stats = await sidecar.get("/stats")
        totals = stats["compression"]
        assert totals["compressed"] == 1 and totals["removed_tokens"] == original - sent
        assert totals["cached_prompt_tokens"] == 1024 and totals["saved_usd"] > 0
        metrics = await sidecar.get_text("/metrics")
        counted = 'semcache_compression_requests_total{mode="extractive",outcome="compressed"} 1.0'
        assert counted in metrics
        assert 'kind="cached_prompt",upstream="default"} 1024.0' in metrics, [
            line for line in metrics.splitlines() if "cached_prompt" in line
        ]


async def test_the_header_chooses_the_mode_per_request(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    messages = long_conversation(10)
    async with start_sidecar(tmp_path, embedder, upstream) as sidecar:  # off by default
        _, _, headers = await sidecar.post("/v1/chat/completions", chat(messages))
        assert "X-Semcache-Compression" not in headers
        assert upstream.calls()[-1].body["messages"] == messages
        _, _, headers = await sidecar.post(
            "/v1/chat/completions", chat(messages[:-2] + messages[-1:]),
            headers={"X-Semcache-Compression": "window", "Cache-Control": "no-cache"},
        )  # fmt: skip
        assert headers["X-Semcache-Compression"] == "window"
        status, body, _ = await sidecar.post(
            "/v1/chat/completions", chat(messages), headers={"X-Semcache-Compression": "zip"}
        )
        assert status == 400 and "X-Semcache-Compression" in body["error"]["message"]


async def test_summary_mode_asks_the_cheaper_model_once_and_falls_back_on_failure(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    messages = long_conversation(10)
    async with start_sidecar(
        tmp_path, embedder, upstream, compression="summary", compression_model="cheap",
        max_retries=0,
    ) as sidecar:  # fmt: skip
        upstream.script = [Behaviour(status=500)]  # the first summary call fails
        status, _, headers = await sidecar.post("/v1/chat/completions", chat(messages))
        assert status == 200
        assert headers["X-Semcache-Compression"] == "summary->extractive"
        summary_calls = [c for c in upstream.calls() if c.body["model"] == "cheap"]
        assert summary_calls  # tried; answered 500
        upstream.script = []
        upstream.default = Behaviour(answer="They talked about physics and films.")
        follow_up = [*messages, {"role": "assistant", "content": "Sure."},
                     {"role": "user", "content": "And one more thing?"}]  # fmt: skip
        status, _, headers = await sidecar.post("/v1/chat/completions", chat(follow_up))
        assert status == 200 and headers["X-Semcache-Compression"] == "summary"
        main = upstream.calls()[-1].body
        assert main["model"] == MODEL
        assert any("They talked about physics" in str(m["content"]) for m in main["messages"])
        written = len([c for c in upstream.calls() if c.body["model"] == "cheap"])
        follow_up += [{"role": "assistant", "content": "Yes."},
                      {"role": "user", "content": "Last one?"}]  # fmt: skip
        await sidecar.post("/v1/chat/completions", chat(follow_up))
        assert len([c for c in upstream.calls() if c.body["model"] == "cheap"]) == written
        assert (tmp_path / "cache" / "summaries").is_dir()


async def test_anthropic_messages_are_compressed_too(
    tmp_path: Path, embedder: Any, upstream: FakeOpenAI
) -> None:
    messages = long_conversation(10)[1:]
    body = orjson.dumps(
        {"model": "claude-sonnet-4", "max_tokens": 100, "system": SYSTEM["content"],
         "messages": messages}
    )  # fmt: skip
    async with start_sidecar(tmp_path, embedder, upstream, compression="extractive") as sidecar:
        status, _, headers = await sidecar.post(
            "/v1/messages", body, headers={"x-api-key": "sk-ant-test"}
        )
        assert status == 200 and headers["X-Semcache-Compression"] == "extractive"
        sent = upstream.calls("/v1/messages")[-1].body
        assert sent["system"] == SYSTEM["content"]
        assert count_history(sent["messages"]) < count_history(messages)
        assert all(m["role"] in ("user", "assistant") for m in sent["messages"])


SENTENCES = [
    ("Это первое предложение. Это второе! Третье? Да.", 4),
    ("Das ist der erste Satz. Österreich ist schön. Über allem steht der Himmel.", 3),
    ("¿Dónde está el banco? ¡Allí está! Él dijo que sí.", 3),
    ("Αυτή είναι η πρώτη πρόταση. Αυτή είναι η δεύτερη.", 2),
    ("यह पहला वाक्य है। यह दूसरा वाक्य है।", 2),
    ("هذه هي الجملة الأولى. هذه هي الجملة الثانية؟ نعم.", 3),
    ("これは最初の文です。これは二番目の文です。", 2),
    ('It cost 3.5 dollars, e.g. for Dr. Smith. "Quoted." Next.', 3),
]


@pytest.mark.parametrize(("text", "count"), SENTENCES)
def test_prose_is_cut_into_sentences_in_any_script(text: str, count: int) -> None:
    units = units_of(text)
    spans = [text[u.start : u.end] for u in units]
    assert len(units) == count, spans
    # Every character but the spaces between sentences is in a unit: nothing is lost.
    assert "".join(spans).replace(" ", "") == text.replace(" ", "")


def test_a_long_message_in_another_language_is_cut_sentence_by_sentence() -> None:
    """A long message in Russian keeps its opening and the sentence that carries a fact, not
    all of itself or nothing (one unit would leave only those two choices)."""
    message = (
        "Спасибо за ваш вопрос, я постараюсь ответить подробно. "
        "Погода в горах меняется очень быстро, поэтому всегда берите тёплую одежду. "
        "Многие туристы недооценивают ветер на перевалах и мёрзнут даже летом. "
        "Ваш номер бронирования в приюте — 48213, сохраните его. "
        "Дорога до приюта занимает около шести часов в спокойном темпе. "
        "По пути есть два родника, но воду лучше кипятить или фильтровать. "
        "Если погода испортится, возвращайтесь вниз, не рискуйте понапрасну. "
        "Хорошего вам похода и отличного настроения на всём маршруте!"
    )
    units = units_of(message)
    assert len(units) == 8
    kept = kept_units(message, user=True)
    assert 0 < len(kept) < len(units)
    kept_text = " ".join(message[units[i].start : units[i].end] for i in sorted(kept))
    assert "48213" in kept_text and kept_text.startswith("Спасибо")


def test_names_are_found_in_any_script_with_case() -> None:
    text = "Вчера я встретил Ивана Петрова в Москве. Then I met Rosalind Okafor. Είδα τον Γιώργο."
    assert names_in(text) == ["Ивана", "Петрова", "Москве", "Rosalind", "Okafor", "Γιώργο"]
