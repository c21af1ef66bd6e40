"""The image, built and run: tools/build_image.sh builds it with Docker or, without a registry,
with podman over a Debian root filesystem from debootstrap; the container starts against a fake
upstream on loopback, passes its own health check, answers a paraphrase from the cache with
the model it carries, and stops cleanly.

Slow (a build is minutes; later ones reuse the engine's layer cache), so not in the default
run: ``make image-test`` runs it, and so does ``make test`` where a container tool is present."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
TAG = "localhost/semcache:test"

pytestmark = pytest.mark.container


def engine() -> str | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return "docker"
    return "podman" if shutil.which("podman") else None


def run_args(tool: str) -> list[str]:
    if tool == "docker":
        return ["--network", "host"]
    script = "source tools/container_env.sh; printf '%s\\n' \"${run_args[@]}\""
    printed = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return printed.stdout.splitlines()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def image() -> str:
    tool = engine()
    if tool is None:
        pytest.skip("no container tool (Docker with an engine, or podman)")
    built = subprocess.run(
        ["bash", "tools/build_image.sh", TAG],
        cwd=ROOT,
        env={**os.environ, "SEMCACHE_IMAGE_ENGINE": tool},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    assert built.stdout.strip().splitlines()[-1] == f"engine: {tool}"
    return tool


def _health(tool: str, name: str) -> bool:
    if tool == "podman":
        # Runs the image's HEALTHCHECK now (no timer needed); fails if the image has none.
        checked = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True)
        return checked.returncode == 0
    status = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Health.Status}}", name],
        capture_output=True,
        text=True,
    )
    return status.stdout.strip() == "healthy"


async def test_the_image_serves_a_paraphrase_hit_and_stops_cleanly(image: str) -> None:
    tool = image
    inspected = subprocess.run(
        [tool, "image", "inspect", TAG, "--format", "{{json .Config.Healthcheck}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "healthz" in inspected.stdout  # the image format kept the health check
    upstream = FakeOpenAI()
    await upstream.start()
    port = free_port()
    name = f"semcache-test-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        [
            tool, "run", "-d", "--name", name, *run_args(tool),
            "-e", f"SEMCACHE_PORT={port}", "-e", "SEMCACHE_HOST=127.0.0.1",
            "-e", f"SEMCACHE_UPSTREAM={upstream.url}", TAG,
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 240
        while not _health(tool, name):
            assert time.monotonic() < deadline, _logs(tool, name)
            await asyncio.sleep(1)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        outcomes = []
        async with aiohttp.ClientSession() as session:
            for text in ("What is the capital of France?", "What's the capital city of France?"):
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
                async with session.post(
                    url, data=orjson.dumps(body), headers={"Authorization": "Bearer sk-test"}
                ) as response:
                    assert response.status == 200, await response.text()
                    outcomes.append(response.headers["X-Semcache"])
                await asyncio.sleep(0.5)  # the answer is stored after the response
        assert outcomes == ["miss", "hit"], _logs(tool, name)
        assert len(upstream.calls()) == 1
        stopped = subprocess.run([tool, "stop", "-t", "30", name], capture_output=True, text=True)
        assert stopped.returncode == 0, stopped.stderr
        code = subprocess.run(
            [tool, "inspect", name, "--format", "{{.State.ExitCode}}"],
            capture_output=True,
            text=True,
        )
        assert code.stdout.strip() == "0", _logs(tool, name)  # SIGTERM: a clean shutdown
    finally:
        subprocess.run([tool, "rm", "-f", name], capture_output=True)
        await upstream.stop()


def _logs(tool: str, name: str) -> str:
    shown = subprocess.run([tool, "logs", "--tail", "60", name], capture_output=True, text=True)
    return shown.stdout + shown.stderr
