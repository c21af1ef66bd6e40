"""Deferrable work: requests marked ``X-Semcache-Priority: batch`` go to the provider as one
batch job (OpenAI's Batch API), the caller gets 202 and a job URL, results are stored as they
arrive."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from semcache.batching.jobs import PRICE_FACTOR, input_file, results, upload
from semcache.budgets import parse_budgets
from semcache.server.controls import tenant_of
from semcache.server.state import STATE
from semcache.upstream.specs import UpstreamSpec, parse_upstreams
from tests.conftest import CountingEmbedder
from tests.fake_openai import FakeOpenAI, answer_to
from tests.sidecar import MODEL, Sidecar, ask, start_sidecar

DEFER = {"X-Semcache-Priority": "batch"}


def pool(upstream: FakeOpenAI) -> tuple[UpstreamSpec, ...]:
    return parse_upstreams(
        [{"name": "pool", "base_url": upstream.url, "api_keys": ["k1", "k2"]}], {}
    )


def fast(upstream: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": pool(upstream),
        "batch_jobs_window_s": 0.2,
        "batch_jobs_poll_s": 0.1,
        **extra,
    }


async def finished(sidecar: Sidecar, url: str, key: str = "sk-raw") -> dict[str, Any]:
    for _ in range(200):
        status, record, _ = await sidecar.get_json(url, {"Authorization": f"Bearer {key}"})
        assert status == 200, record
        if record["status"] not in ("queued", "submitted"):
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never finished: {record}")


def test_the_job_file_and_its_results_round_trip() -> None:
    data = input_file([("a", "/v1/chat/completions", ask("Hi")), ("b", "/v1/completions", {})])
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert [line["custom_id"] for line in lines] == ["a", "b"]
    assert lines[0] == {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": ask("Hi"),
    }
    body, content_type = upload(data)
    boundary = content_type.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode()) and data in body
    output = (
        b'{"custom_id": "a", "response": {"status_code": 200, "body": {"x": 1}}, "error": null}\n'
        b"not json\n"
        b'{"custom_id": "b", "response": null, "error": {"message": "expired"}}\n'
    )
    read = list(results(output))
    assert [(r.custom_id, r.status, r.error) for r in read] == [
        ("a", 200, None),
        ("b", 0, "expired"),
    ]


async def test_a_deferred_request_gets_202_then_its_answer_and_the_cache_keeps_it(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, **fast(upstream)) as sidecar:
        prompts = ["What is the capital of Peru?", "How many legs does a spider have?"]
        accepted = await asyncio.gather(
            *(sidecar.post("/v1/chat/completions", orjson.dumps(ask(p)), DEFER) for p in prompts)
        )
        for status, record, headers in accepted:
            assert status == 202, record
            assert record["status"] == "queued" and headers["Location"] == record["url"]
            assert record["url"].startswith("/v1/semcache/jobs/sjob-")
        assert upstream.calls() == []  # nothing was sent one by one
        for (_, record, _), prompt in zip(accepted, prompts, strict=True):
            done = await finished(sidecar, record["url"])
            assert done["status"] == "completed", done
            assert done["response"]["status_code"] == 200
            answer = done["response"]["body"]
            assert answer["choices"][0]["message"]["content"] == answer_to(prompt)
            assert done["batch"]["status"] == "completed"
        # One file, one job, both with the same pool key, polled with it.
        assert len(upstream.jobs) == 1
        job = next(iter(upstream.jobs.values()))
        uploads = [r for r in upstream.received if r.path == "/v1/files"]
        assert len(uploads) == 1 and uploads[0].key == job["key"].removeprefix("Bearer ")
        assert job["key"] in ("Bearer k1", "Bearer k2")
        # The answers are in the cache: asked now, they are hits.
        for prompt in prompts:
            status, answer, headers = await sidecar.post(
                "/v1/chat/completions", orjson.dumps(ask(prompt))
            )
            assert headers["X-Semcache"] == "hit"
            assert answer["choices"][0]["message"]["content"] == answer_to(prompt)
        # A hit is served at once even when marked batch.
        status, answer, headers = await sidecar.post(
            "/v1/chat/completions", orjson.dumps(ask(prompts[0])), DEFER
        )
        assert status == 200 and headers["X-Semcache"] == "hit"
        stats = await sidecar.get("/stats")
        assert stats["batch_jobs"] == {"collecting": 0, "open_jobs": 0}
        metrics = await sidecar.get_text("/metrics")
        assert 'semcache_deferred_requests_total{outcome="completed"} 2.0' in metrics


async def test_a_job_url_belongs_to_its_tenant_alone(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, **fast(upstream)) as sidecar:
        status, record, _ = await sidecar.post(
            "/v1/chat/completions", orjson.dumps(ask("Where is Lima?")), DEFER
        )
        assert status == 202
        await finished(sidecar, record["url"])
        status, other, _ = await sidecar.get_json(
            record["url"], {"Authorization": "Bearer sk-someone-else"}
        )
        assert status == 404 and "choices" not in orjson.dumps(other).decode()
        status, _, _ = await sidecar.get_json(record["url"], {})
        assert status == 404
        status, _, _ = await sidecar.get_json("/v1/semcache/jobs/sjob-nothing", {})
        assert status == 404


async def test_failed_and_unanswered_requests_are_reported_and_never_stored(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    upstream.job_fault = "error_line"
    upstream.job_outcome = "expired"
    async with start_sidecar(tmp_path, embedder, upstream, **fast(upstream)) as sidecar:
        prompts = [f"Question number {i} about rivers?" for i in range(4)]
        accepted = []
        for prompt in prompts:  # in order: the fake fails the first line, skips odd ones
            accepted.append(
                await sidecar.post("/v1/chat/completions", orjson.dumps(ask(prompt)), DEFER)
            )
        states = [(await finished(sidecar, r["url"]))["status"] for _, r, _ in accepted]
        assert states == ["failed", "expired", "completed", "expired"]
        for _ in range(20):
            if len(sidecar.cache) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(sidecar.cache) == 1


async def test_deferred_requests_survive_a_restart(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    slow = fast(upstream, batch_jobs_window_s=3600)
    async with start_sidecar(tmp_path, embedder, upstream, **slow) as sidecar:
        status, record, _ = await sidecar.post(
            "/v1/chat/completions", orjson.dumps(ask("What do koalas eat?")), DEFER
        )
        assert status == 202
    assert upstream.jobs == {}  # stopped before its window closed
    async with start_sidecar(tmp_path, embedder, upstream, **fast(upstream)) as sidecar:
        done = await finished(sidecar, record["url"])
        assert done["status"] == "completed"
        assert done["response"]["body"]["choices"][0]["message"]["content"] == answer_to(
            "What do koalas eat?"
        )


async def test_a_job_is_billed_at_the_batch_price(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> None:
    budgets = parse_budgets({"daily_usd": 100.0})
    async with start_sidecar(
        tmp_path, embedder, upstream, **fast(upstream, budgets=budgets)
    ) as sidecar:
        long_question = "Name a large lake. " + "Consider every continent in turn. " * 400
        _, record, _ = await sidecar.post(
            "/v1/chat/completions", orjson.dumps(ask(long_question)), DEFER
        )
        done = await finished(sidecar, record["url"])
        usage = done["response"]["body"]["usage"]
        state = sidecar.app[STATE]
        full = state.prices.cost(MODEL, usage["prompt_tokens"], usage["completion_tokens"])
        tenant = tenant_of({"Authorization": "Bearer sk-raw"}, None)
        assert state.ledger is not None and tenant is not None
        # (the ledger counts micro-dollars: the question is long enough for that not to matter)
        assert state.ledger.spent(tenant, "day") == pytest.approx(full * PRICE_FACTOR, rel=1e-2)


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/v1/chat/completions", ask("Hi there", stream=True), "stream"),
        ("/v1/messages", {"model": "claude", "max_tokens": 9, "messages": []}, "/v1/messages"),
    ],
)
async def test_requests_a_job_cannot_carry_are_refused(
    tmp_path: Path,
    embedder: CountingEmbedder,
    upstream: FakeOpenAI,
    path: str,
    body: dict[str, Any],
    reason: str,
) -> None:
    async with start_sidecar(tmp_path, embedder, upstream, **fast(upstream)) as sidecar:
        if path == "/v1/messages":
            body["messages"] = [{"role": "user", "content": "Hi there"}]
        status, error, _ = await sidecar.post(path, orjson.dumps(body), DEFER)
        assert status == 400 and reason in error["error"]["message"], error


async def test_without_pool_keys_deferral_is_refused(sidecar: Sidecar) -> None:
    status, error, _ = await sidecar.post(
        "/v1/chat/completions", orjson.dumps(ask("Hi there")), DEFER
    )
    assert status == 400 and "api_keys" in error["error"]["message"]
