"""The status page (``/dashboard``) in a real headless browser: Chromium from Debian's
packages, driven by Playwright. The page loads without a console error, its numbers and charts
show the traffic the test just sent, and it stays behind the admin token.

``SEMCACHE_SCREENSHOTS=1`` also writes the screenshot to docs/status-page.png."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from semcache.budgets import parse_budgets
from semcache.pricing import Price, PriceTable
from semcache.server.status_history import Snapshot, quantile
from tests.fake_openai import FakeOpenAI
from tests.sidecar import Sidecar
from tests.test_upstreams import chat, pool, sidecar_with

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "admin-secret"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    before = Snapshot(0, {}, ((0.1, 0), (0.5, 0), (float("inf"), 0)), 0, 0, 0, 0)
    after = Snapshot(10, {}, ((0.1, 50), (0.5, 90), (float("inf"), 100)), 0, 0, 0, 0)
    assert quantile(0.5, before, after) == pytest.approx(0.1)
    assert quantile(0.7, before, after) == pytest.approx(0.1 + 0.4 * 20 / 40)
    assert quantile(0.99, before, after) == 0.5  # past the last finite bound
    assert quantile(0.5, after, after) is None  # nothing happened


async def send_traffic(sidecar: Sidecar, rounds: int) -> int:
    """Rounds of one miss and its repeat (a hit) per question, a little apart so that the
    page has several points; returns the number of requests."""
    sent = 0
    for i in range(rounds):
        for question in (f"What is the capital of country {i}?", f"How tall is mountain {i}?"):
            for _ in range(2):
                status, _, _ = await chat(sidecar, question)
                assert status == 200
                sent += 1
        await asyncio.sleep(0.25)
    return sent


@pytest.mark.skipif(CHROMIUM is None, reason="chromium: apt-get install chromium")
async def test_the_status_page_shows_the_last_traffic_in_a_real_browser(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    from playwright.async_api import async_playwright

    settings = {
        "admin_token": TOKEN,
        "status_interval_s": 0.2,
        "budgets": parse_budgets({"daily_usd": 1.0, "monthly_usd": 20.0}),
        "prices": PriceTable({"gpt-4o-mini": Price(0.15, 0.6)}),
        "health_check_interval_s": 30,
    }
    tables = [pool(upstream, api_keys=["sk-pool-0", "sk-pool-1"], rpm=600, tpm=200_000)]
    async with sidecar_with(tmp_path, upstream, tables, **settings) as sidecar:
        async with aiohttp.ClientSession() as session:
            refused = await session.get(sidecar.url + "/dashboard")
            assert refused.status == 401 and "Basic" in refused.headers["WWW-Authenticate"]
            data_url = sidecar.url + "/dashboard/data"
            basic = base64.b64encode(b"admin:wrong").decode()
            wrong = await session.get(data_url, headers={"Authorization": f"Basic {basic}"})
            assert wrong.status == 401
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await session.get(data_url, headers=bearer)).status == 200
        sent = await send_traffic(sidecar, rounds=6)
        await asyncio.sleep(0.5)  # a sample after the last request

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM,
                # No background traffic: this machine's network is closed, and the page must
                # not need it.
                args=[
                    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync",
                ],
            )  # fmt: skip
            context = await browser.new_context(
                http_credentials={"username": "admin", "password": TOKEN},
                viewport={"width": 1280, "height": 900},
            )
            page = await context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            outside: list[str] = []
            page.on(
                "request",
                lambda r: None if r.url.startswith(sidecar.url) else outside.append(r.url),
            )
            response = await page.goto(sidecar.url + "/dashboard")
            assert response is not None and response.status == 200
            # A selector, not a JavaScript predicate: the page's Content-Security-Policy forbids
            # eval, which wait_for_function needs when it has to poll (a slow first load).
            await page.wait_for_selector("body[data-loaded]", state="attached")
            requests_shown = await page.text_content("#requests")
            hit_rate = await page.text_content("#hit-rate")
            hit_peak = await page.get_attribute(
                '#chart-requests path[data-series="hit"][data-peak]', "data-peak"
            )
            keys = await page.text_content("#keys")
            budgets = await page.text_content("#budgets")
            shot = await page.screenshot(full_page=True)
            await browser.close()
    assert problems == [] and outside == []
    assert requests_shown == str(sent)
    assert hit_rate == "50.0%"  # each question asked twice: a miss, then a hit
    assert hit_peak is not None and float(hit_peak) > 0
    assert "sk-pool" not in keys and "main#0" in keys and "main#1" in keys  # ids, never secrets
    assert "overall" in budgets and "day" in budgets
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SEMCACHE_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        (DOCS / "status-page.png").write_bytes(shot)
