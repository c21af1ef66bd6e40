"""A full or read-only disk: the cache keeps answering with what it holds, loses nothing, and
the sidecar refuses to start with one clear line rather than a traceback.

The disk is a real tmpfs of a few hundred kilobytes, mounted for the test (it needs root, as in
CI; elsewhere these tests are skipped).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from semcache import SemanticCache
from semcache.policy import Reason
from tests.conftest import WordHashEmbedder

PROMPTS = [f"question number {i} about colour {c}" for i, c in enumerate("rgbcmykw" * 3)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(cache: SemanticCache) -> int:
    """Store bulky entries until the disk refuses; how many it took."""
    for n in range(100_000):
        try:
            cache.put(f"filler entry {n} with some words", "x" * 4000)
        except Exception:
            return n
    raise AssertionError("the disk never filled")


def test_a_full_disk_keeps_serving_what_is_stored(small_disk: Path) -> None:
    with SemanticCache(small_disk / "cache", embedder=WordHashEmbedder()) as cache:
        cache.put_many(PROMPTS, [f"answer {i}" for i in range(len(PROMPTS))])
        filled = _fill(cache)
        assert filled > 0
        for i, prompt in enumerate(PROMPTS):
            exact = cache.get(prompt)
            assert exact is not None and exact.response == f"answer {i}"
            semantic = cache.lookup_many([_request(prompt + " please", min_similarity=0.5)])[0]
            assert semantic.hit is not None and semantic.reason is Reason.SEMANTIC
        assert cache.stats()["entries"] == len(PROMPTS) + filled


def test_the_sidecar_refuses_a_full_or_read_only_disk_in_one_line(small_disk: Path) -> None:
    directory = small_disk / "cache"
    with SemanticCache(directory, embedder=WordHashEmbedder()) as cache:
        cache.put_many(PROMPTS, ["a"] * len(PROMPTS))
        _fill(cache)
    for state in ("full", "read-only"):
        if state == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        result = _serve(directory)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, state
        assert len(lines) == 1 and lines[0].startswith("semcache: "), (state, result.stderr)
        assert "Traceback" not in result.stderr
    # Given room again, the store opens with everything it held.
    subprocess.run(["mount", "-o", "remount,rw,size=8m", str(small_disk)], check=True)
    with SemanticCache(directory, embedder=WordHashEmbedder()) as cache:
        assert all(cache.get(prompt) is not None for prompt in PROMPTS)  # nothing was lost


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(tmp_path / "cache", port=port)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]
    assert not (tmp_path / "cache").exists()  # refused before the cache was opened


def _serve(directory: Path, port: int | None = None) -> subprocess.CompletedProcess[str]:
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    code = (
        "import sys; from semcache.cli import main; "
        f"sys.exit(main(['serve', '--cache-dir', {str(directory)!r}, '--port', '{port}', "
        "'--log-level', 'error']))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _request(prompt: str, **options: float):  # type: ignore[no-untyped-def]
    from semcache.keys import CacheRequest

    return CacheRequest(prompt=prompt, **options)
