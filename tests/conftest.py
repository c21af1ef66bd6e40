from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import settings
from numpy.typing import NDArray

from semcache import SemanticCache, SentenceTransformerEmbedder
from semcache.embedding import Reading
from semcache.onnx_embedding import OnnxEmbedder
from tests.fake_openai import FakeOpenAI

if TYPE_CHECKING:
    from tests.sidecar import Sidecar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# In CI the property tests draw the same examples on every run, so that a run is repeatable
# and a rare example found elsewhere cannot fail a commit that did not touch it; elsewhere
# they draw new ones each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

DATA = Path(__file__).parent / "data"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WordHashEmbedder:
    """A deterministic, model-free embedder: the normalised sum of one random vector per word.

    Texts sharing words are close, so it exercises the cache's mechanics (index, store,
    eviction, durability) at thousands of puts per second. Quality tests use the real model.
    """

    name = "word-hash-64"
    dim = 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()) or [text]:
                seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest())
                out[row] += np.random.default_rng(seed).standard_normal(self.dim)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


class CountingEmbedder:
    """Wraps an embedder and counts its calls and texts."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner = inner
        self.calls: list[int] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    def read(self, texts: Sequence[str]) -> list[Reading]:
        return self.inner.read(texts)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(len(texts))
        return self.inner.embed(texts)


@pytest.fixture(scope="session")
def model() -> OnnxEmbedder:
    """The real all-MiniLM-L6-v2 on the default backend (ONNX Runtime), loaded once."""
    embedder = OnnxEmbedder()
    embedder.embed(["warm up"])
    return embedder


@pytest.fixture(scope="session")
def torch_model() -> SentenceTransformerEmbedder:
    """The same model on torch (sentence-transformers), loaded once for the whole run."""
    embedder = SentenceTransformerEmbedder()
    embedder.embed(["warm up"])
    return embedder


@pytest.fixture
def embedder(model: OnnxEmbedder) -> CountingEmbedder:
    return CountingEmbedder(model)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(tmp_path: Path, embedder: CountingEmbedder, clock: FakeClock) -> Iterator[SemanticCache]:
    with SemanticCache(tmp_path / "cache", embedder=embedder, clock=clock) as cache:
        yield cache


@pytest.fixture
def fast_cache(tmp_path: Path, clock: FakeClock) -> Iterator[SemanticCache]:
    with SemanticCache(tmp_path / "fast", embedder=WordHashEmbedder(), clock=clock) as cache:
        yield cache


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI API on 127.0.0.1 (tests/fake_openai.py)."""
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def sidecar(
    tmp_path: Path, embedder: CountingEmbedder, upstream: FakeOpenAI
) -> AsyncIterator[Sidecar]:
    """The sidecar over ``upstream`` with the real model, admin token ``s3cret``."""
    from tests.sidecar import start_sidecar

    async with start_sidecar(tmp_path, embedder, upstream, admin_token="s3cret") as running:
        yield running


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A real redis-server on a free loopback port (tests/redis_server.py), stopped after."""
    import shutil

    from tests.redis_server import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
