"""Deferrable work: requests marked ``X-Semcache-Priority: batch`` go to the provider as a batch
job (see :mod:`semcache.batching.jobs`) instead of one call each, at about half the price,
answered within the provider's window (24 h).

A miss so marked is answered ``202`` with the URL of its job on the sidecar
(``/v1/semcache/jobs/{id}``), where its caller (the same tenant, nobody else) reads its state
and, once there, its answer. Requests are collected for ``batch_jobs_window_s`` (or up to
``batch_jobs_max_items``) per endpoint and model, uploaded as one file and started with the
pool's key that uploaded it; the job is then polled with that key every ``batch_jobs_poll_s``.
Answers are stored in the cache as the job's results arrive, and billed at the batch price.

Everything is kept on disk (``cache_dir/jobs``) before the caller is answered: a restart
resumes collecting, submitting and polling where it stopped. Jobs need pool keys: the caller's
own key is never written down, and a job is polled long after its request ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diskcache
import orjson
from aiohttp import web

from semcache.batching.jobs import (
    COMPLETION_WINDOW,
    FINISHED,
    PRICE_FACTOR,
    input_file,
    results,
    upload,
)
from semcache.dialects import DIALECTS, Dialect
from semcache.keys import CacheRequest
from semcache.server import accounting
from semcache.server.controls import ANONYMOUS, tenant_of
from semcache.server.error_responses import error_response
from semcache.server.pipeline.relay import json_text
from semcache.server.state import CLIENT, STATE

if TYPE_CHECKING:
    from semcache.server.state import State

logger = logging.getLogger("semcache.server")

JOBS_PATH = "/v1/semcache/jobs"
# Results of finished requests are kept this long for their callers to read.
KEEP_S = 7 * 24 * 3600
SUBMIT_ATTEMPTS = 5
_BY_PATH = {dialect.path: dialect for dialect in DIALECTS}


class JobFailedError(Exception):
    pass


@dataclass
class Deferred:
    """What the pipeline hands over for a deferred request."""

    path: str
    model: str
    body: dict[str, Any]
    tenant: str
    request: CacheRequest | None  # where the answer is stored (None: not stored)


class BatchJobs:
    def __init__(
        self,
        directory: Path,
        state_of: Callable[[], State],
        *,
        window_s: float,
        max_items: int,
        poll_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._directory = directory
        self._state_of = state_of
        self.window_s = window_s
        self.max_items = max_items
        self.poll_s = poll_s
        self._clock = clock
        self._db: diskcache.Cache | None = None
        self._collecting: dict[tuple[str, str], list[str]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._open: set[str] = set()  # ids of the jobs not finished

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def db(self) -> diskcache.Cache:
        if self._db is None:
            raise RuntimeError("the batch jobs are not started")
        return self._db

    async def start(self) -> None:
        self._db = await asyncio.to_thread(diskcache.Cache, str(self._directory))
        for key, value in await asyncio.to_thread(self._unfinished):
            if key.startswith("job:"):
                self._open.add(value["id"])
            else:
                self._collect(value)
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    def _unfinished(self) -> list[tuple[str, dict[str, Any]]]:
        """Jobs not finished, and requests not yet in a job, as left by the last run."""
        found = []
        for key in self.db.iterkeys():
            value = self.db.get(key)
            if not isinstance(key, str) or not isinstance(value, dict):
                continue
            open_job = key.startswith("job:") and value["status"] not in FINISHED
            waiting = key.startswith("request:") and value["status"] == "queued"
            if open_job or (waiting and not value["job"]):
                found.append((key, value))
        return found

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- requests ------------------------------------------------------------------------

    def defer(self, deferred: Deferred) -> dict[str, Any]:
        """Keep a request for the next job; its record, as its caller sees it."""
        request_id = "sjob-" + secrets.token_hex(12)
        request = deferred.request
        record = {
            "id": request_id,
            "tenant": deferred.tenant,
            "path": deferred.path,
            "model": deferred.model,
            "body": deferred.body,
            "request": None
            if request is None
            else {
                "prompt": request.prompt,
                "namespace": request.namespace,
                "context": dict(request.context),
                "ttl_s": request.ttl_s,
            },
            "status": "queued",
            "job": None,
            "created_at": int(self._clock()),
            "completed_at": None,
            "response": None,
            "error": None,
        }
        self.db.set(f"request:{request_id}", record)
        self._state_of().metrics.deferred_requests.labels("queued").inc()
        self._collect(record)
        return public(record)

    def read(self, request_id: str, tenant: str) -> dict[str, Any] | None:
        record = self.db.get(f"request:{request_id}")
        if not isinstance(record, dict) or record["tenant"] != tenant:
            return None
        job = self.db.get(f"job:{record['job']}") if record.get("job") else None
        return public(record, job)

    def describe(self) -> dict[str, int]:
        return {
            "collecting": sum(len(ids) for ids in self._collecting.values()),
            "open_jobs": len(self._open),
        }

    def _collect(self, record: dict[str, Any]) -> None:
        group = (record["path"], record["model"])
        waiting = self._collecting.setdefault(group, [])
        waiting.append(record["id"])
        if len(waiting) >= self.max_items:
            self._close(group)
        elif group not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[group] = loop.call_later(self.window_s, self._close, group)

    def _close(self, group: tuple[str, str]) -> None:
        timer = self._timers.pop(group, None)
        if timer is not None:
            timer.cancel()
        request_ids = self._collecting.pop(group, [])
        if not request_ids:
            return
        path, model = group
        job_id = "job-" + secrets.token_hex(8)
        job = {
            "id": job_id,
            "path": path,
            "model": model,
            "requests": request_ids,
            "status": "unsubmitted",
            "batch_id": None,
            "key_id": None,
            "upstream": None,
            "attempts": 0,
            "created_at": int(self._clock()),
            "next_poll": 0.0,
        }
        with self.db.transact():
            self.db.set(f"job:{job_id}", job)
            for request_id in request_ids:
                record = self.db.get(f"request:{request_id}")
                if isinstance(record, dict):
                    self.db.set(f"request:{request_id}", {**record, "job": job_id})
        self._open.add(job_id)
        self._wake.set()

    # -- jobs ----------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            for job_id in list(self._open):
                try:
                    job = self.db.get(f"job:{job_id}")
                    if not isinstance(job, dict) or job["status"] in FINISHED:
                        self._open.discard(job_id)
                    elif job["next_poll"] <= now:
                        await self._advance(job)
                except Exception:  # the next round tries again; the poller never stops
                    logger.exception("batch job %s could not be advanced", job_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(self.poll_s, 5.0))

    async def _advance(self, job: dict[str, Any]) -> None:
        try:
            if job["batch_id"] is None:
                await self._submit(job)
            else:
                await self._check(job)
        except Exception as exc:
            job["attempts"] += 1
            logger.warning("batch job %s: %s (attempt %d)", job["id"], exc, job["attempts"])
            if job["batch_id"] is None and job["attempts"] >= SUBMIT_ATTEMPTS:
                self._finish(job, "failed", f"the job could not be submitted: {exc}")
                return
            job["next_poll"] = self._clock() + min(self.poll_s, 2.0 ** job["attempts"])
            self.db.set(f"job:{job['id']}", job)

    async def _submit(self, job: dict[str, Any]) -> None:
        state = self._state_of()
        records = [self.db.get(f"request:{i}") for i in job["requests"]]
        lines = [(r["id"], r["path"], r["body"]) for r in records if isinstance(r, dict)]
        body, content_type = upload(input_file(lines))
        async with state.router.send(
            "POST",
            "/v1/files",
            headers={"Content-Type": content_type},
            body=body,
            model=job["model"],
            buffered=True,
        ) as attempt:
            uploaded = _json(await attempt.response.read(), attempt.response.status)
            job["key_id"], job["upstream"] = attempt.target.id, attempt.target.upstream.name
        file_id = uploaded.get("id")
        if not isinstance(file_id, str):
            raise JobFailedError("the upload answered no file id")
        created = await self._call(
            job,
            "POST",
            "/v1/batches",
            orjson.dumps(
                {
                    "input_file_id": file_id,
                    "endpoint": job["path"],
                    "completion_window": COMPLETION_WINDOW,
                    "metadata": {"semcache_job": job["id"]},
                }
            ),
        )
        batch_id = created.get("id")
        if not isinstance(batch_id, str):
            raise JobFailedError("the batch was not created")
        job.update(
            batch_id=batch_id,
            file_id=file_id,
            status="submitted",
            status_seen=str(created.get("status") or "validating"),
            attempts=0,
            next_poll=self._clock() + self.poll_s,
        )
        with self.db.transact():
            self.db.set(f"job:{job['id']}", job)
            for request_id in job["requests"]:
                record = self.db.get(f"request:{request_id}")
                if isinstance(record, dict):
                    self.db.set(f"request:{request_id}", {**record, "status": "submitted"})
        state.metrics.batch_jobs.labels("submitted").inc()
        logger.info("batch job %s submitted as %s (%d requests)", job["id"], batch_id, len(lines))

    async def _check(self, job: dict[str, Any]) -> None:
        batch = await self._call(job, "GET", f"/v1/batches/{job['batch_id']}", None)
        status = str(batch.get("status") or "unknown")
        job.update(status_seen=status, next_poll=self._clock() + self.poll_s, attempts=0)
        self.db.set(f"job:{job['id']}", job)
        if status not in FINISHED:
            return
        answered: set[str] = set()
        for name in ("output_file_id", "error_file_id"):
            file_id = batch.get(name)
            if isinstance(file_id, str) and file_id:
                data = await self._call_raw(job, "GET", f"/v1/files/{file_id}/content")
                for result in results(data):
                    if result.custom_id in job["requests"] and result.custom_id not in answered:
                        answered.add(result.custom_id)
                        await self._settle(job, result.custom_id, result.status, result.body,
                                           result.error)  # fmt: skip
        self._finish(job, status, f"the provider's batch ended {status} without an answer")

    async def _settle(
        self, job: dict[str, Any], request_id: str, status: int, body: Any, error: str | None
    ) -> None:
        """One request's result: billed, kept for its caller, stored in the cache when it is
        a complete, valid answer."""
        key = f"request:{request_id}"
        record = self.db.get(key)
        if not isinstance(record, dict) or record["status"] in ("completed", "failed"):
            return
        state = self._state_of()
        dialect: Dialect = _BY_PATH[record["path"]]
        valid = status == 200 and dialect.valid_answer(body)
        if valid:
            accounting.bill(
                state, job["upstream"] or "", job["key_id"] or "", record["model"], body,
                dialect.usage(body), dialect=dialect, payers=[(record["tenant"], 1.0)],
                discount=PRICE_FACTOR,
            )  # fmt: skip
        record.update(
            status="completed" if valid else "failed",
            completed_at=int(self._clock()),
            response={"status_code": status, "body": body} if status else None,
            error=None if valid else (error or f"the provider answered {status}"),
        )
        record.pop("body", None)  # the prompt is not kept longer than needed
        self.db.set(key, record, expire=KEEP_S)
        state.metrics.deferred_requests.labels(record["status"]).inc()
        stored = record.get("request")
        if valid and stored is not None and dialect.finished_normally(body):
            try:
                await state.cache.astore(CacheRequest(**stored), body)
            except Exception:
                logger.exception("storing a batch job's answer failed")
                state.metrics.cache_errors.labels("store").inc()

    def _finish(self, job: dict[str, Any], status: str, error: str) -> None:
        """The job is over: requests without a result get ``status`` and ``error``."""
        state = self._state_of()
        job.update(status=status if status in FINISHED else "failed")
        for request_id in job["requests"]:
            key = f"request:{request_id}"
            record = self.db.get(key)
            if isinstance(record, dict) and record["status"] not in ("completed", "failed"):
                outcome = "expired" if status == "expired" else "failed"
                record.update(status=outcome, error=error, completed_at=int(self._clock()))
                record.pop("body", None)
                self.db.set(key, record, expire=KEEP_S)
                state.metrics.deferred_requests.labels(outcome).inc()
        self.db.set(f"job:{job['id']}", job, expire=KEEP_S)
        self._open.discard(job["id"])
        state.metrics.batch_jobs.labels(job["status"]).inc()

    async def _call(
        self, job: dict[str, Any], method: str, path: str, body: bytes | None
    ) -> dict[str, Any]:
        """A JSON call about ``job``, with the key that made it."""
        return _json(await self._call_raw(job, method, path, body), 200)

    async def _call_raw(
        self, job: dict[str, Any], method: str, path: str, body: bytes | None = None
    ) -> bytes:
        """The body of a call about ``job``, with the key that made it.

        Raises:
            JobFailedError: the provider answered something else than 200.
        """
        state = self._state_of()
        async with state.router.send(
            method, path, headers={"Content-Type": "application/json"}, body=body,
            model=job["model"], buffered=True, key_id=job["key_id"],
        ) as attempt:  # fmt: skip
            data = await attempt.response.read()
            if attempt.response.status != 200:
                raise JobFailedError(f"{path} answered {attempt.response.status}: {data[:200]!r}")
            return data


def _json(data: bytes, status: int) -> dict[str, Any]:
    if status != 200:
        raise JobFailedError(f"the provider answered {status}: {data[:200]!r}")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise JobFailedError("the provider answered something that is not JSON") from None
    if not isinstance(value, dict):
        raise JobFailedError("the provider answered something that is not a JSON object")
    return value


def public(record: dict[str, Any], job: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deferred request as its caller sees it."""
    return {
        "id": record["id"],
        "object": "semcache.deferred_request",
        "status": record["status"],
        "url": f"{JOBS_PATH}/{record['id']}",
        "created_at": record["created_at"],
        "completed_at": record["completed_at"],
        "model": record["model"],
        "endpoint": record["path"],
        "batch": None
        if job is None or job.get("batch_id") is None
        else {"id": job["batch_id"], "status": job.get("status_seen", job["status"])},
        "response": record["response"],
        "error": None if record["error"] is None else {"message": record["error"]},
    }


async def job_status(request: web.Request) -> web.Response:
    """``GET /v1/semcache/jobs/{id}``: a deferred request's state, and its answer once there;
    a request of another tenant is not found, like one that never existed."""
    state = request.app[STATE]
    tenant = tenant_of(request.headers, request.get(CLIENT))
    if tenant is None and state.config.anonymous_cache:
        tenant = ANONYMOUS
    record = None
    if tenant is not None:
        record = await asyncio.to_thread(state.batch_jobs.read, request.match_info["id"], tenant)
    if record is None:
        return error_response(404, "no such deferred request", code="not_found")
    return web.json_response(record, dumps=json_text)
