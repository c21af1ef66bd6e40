"""The ONNX Runtime backend gives the torch path's vectors and the same hit decisions."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from semcache import (
    CacheRequest,
    ConfigError,
    ModelNotFoundError,
    SemanticCache,
    SentenceTransformerEmbedder,
)
from semcache.embedding import make_embedder, resolve_model
from semcache.onnx_embedding import (
    RECORD_FILE,
    OnnxEmbedder,
    export,
    is_exported,
    sub_batches,
)

DATA = Path(__file__).parent / "data"


def qqp_pairs() -> list[dict[str, object]]:
    lines = (DATA / "qqp_test_sample.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_vectors_equal_the_torch_path(
    model: OnnxEmbedder, torch_model: SentenceTransformerEmbedder
) -> None:
    texts = [str(row[side]) for row in qqp_pairs() for side in ("a", "b")]
    # Beyond the window, unreadable text, one character, a long run of one word.
    texts += ["word " * 400, "🙂🙂", "a", "x" * 300]
    onnx_vectors, torch_vectors = model.embed(texts), torch_model.embed(texts)
    assert onnx_vectors.shape == torch_vectors.shape == (len(texts), 384)
    assert onnx_vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)
    assert float((onnx_vectors * torch_vectors).sum(axis=1).min()) >= 0.9999
    assert model.read(texts) == torch_model.read(texts)
    assert model.max_tokens == torch_model.max_tokens and model.name == torch_model.name


def test_a_call_alone_uses_every_core_and_calls_at_once_one_each(model: OnnxEmbedder) -> None:
    texts = [str(row["a"]) for row in qqp_pairs()[:64]]
    alone = model.embed(texts)
    assert model.alone_threads == max(model.threads, os.cpu_count() or 1)
    used: list[int] = []
    session = type(model)._session

    def spy(self: OnnxEmbedder) -> Any:
        return _recording(session(self), used)

    start = threading.Barrier(2)
    vectors: list[np.ndarray[Any, Any]] = []

    def call() -> None:
        start.wait()
        vectors.append(model.embed(texts))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model), "_session", spy)
        # While the first call of a thread holds its session, the other thread's starts.
        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert model.threads in used  # at least one pass overlapped the other thread's
    for together in vectors:  # either session gives the same vectors
        assert float((together * alone).sum(axis=1).min()) >= 0.99999


@contextmanager
def _recording(inner: Any, used: list[int]) -> Iterator[Any]:
    with inner as runtime:
        used.append(runtime.session.get_session_options().intra_op_num_threads)
        time.sleep(0.01)  # hold the session long enough for the other thread to meet it
        yield runtime


def test_the_same_hit_decisions_as_the_torch_path_on_qqp(
    tmp_path: Path, model: OnnxEmbedder, torch_model: SentenceTransformerEmbedder
) -> None:
    pairs = qqp_pairs()
    outcomes = []
    for name, embedder in (("onnx", model), ("torch", torch_model)):
        with SemanticCache(tmp_path / name, embedder=embedder) as cache:
            ids = cache.put_many([str(p["a"]) for p in pairs], [str(p["a"]) for p in pairs])
            decisions = cache.lookup_many([CacheRequest(prompt=str(p["b"])) for p in pairs])
            position = {entry_id: i for i, entry_id in enumerate(ids)}
            outcomes.append(
                [(d.reason, position.get(d.entry_id) if d.hit else None) for d in decisions]
            )
    assert outcomes[0] == outcomes[1]
    assert sum(1 for _, served in outcomes[0] if served is not None) >= 30  # not all misses


def test_the_backend_is_a_setting(tmp_path: Path) -> None:
    assert isinstance(make_embedder(), OnnxEmbedder)
    assert isinstance(make_embedder(backend="torch"), SentenceTransformerEmbedder)
    with pytest.raises(ConfigError, match="embedding_backend"):
        SemanticCache(tmp_path, embedding_backend="tensorflow")


def test_export_from_local_weights_and_again_when_they_change(tmp_path: Path) -> None:
    _, source = resolve_model()
    target = tmp_path / "onnx" / "all-MiniLM-L6-v2"
    assert not is_exported(source, target)
    export(source, target)
    assert is_exported(source, target)
    record = json.loads((target / RECORD_FILE).read_text())
    record["weights"][0]["size"] += 1  # as if the weights were replaced
    (target / RECORD_FILE).write_text(json.dumps(record))
    assert not is_exported(source, target)
    embedder = OnnxEmbedder(models_dir=tmp_path)
    vector = embedder.embed(["Which planet is closest to the sun?"])
    assert vector.shape == (1, 384) and is_exported(source, target)  # exported again on use
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".partial")]


def test_a_models_folder_that_cannot_be_written_exports_under_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = tmp_path / "models"
    frozen.mkdir()
    (frozen / "onnx").write_text("a file where the folder would go: no one can write there")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    vectors = OnnxEmbedder(models_dir=frozen).embed(["hello"])
    assert vectors.shape == (1, 384)
    assert (tmp_path / "user-cache" / "semcache" / "onnx" / "all-MiniLM-L6-v2").is_dir()


@given(
    st.lists(st.integers(min_value=1, max_value=300), max_size=80),
    st.integers(min_value=1, max_value=2048),
    st.integers(min_value=1, max_value=40),
)
def test_sub_batches_cover_every_text_once_within_bounds(
    lengths: list[int], cells: int, most: int
) -> None:
    groups = sub_batches(lengths, cells=cells, most=most)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        assert 1 <= len(group) <= most
        assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= cells


def test_an_exported_graph_serves_where_the_weights_are_not_installed(
    tmp_path: Path, model: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import semcache.embedding

    shutil.copytree(model.runtime_dir, tmp_path / "onnx" / "all-MiniLM-L6-v2")
    monkeypatch.setitem(semcache.embedding.PACKAGED_MODELS, "all-MiniLM-L6-v2", "no_such_pkg")
    with pytest.raises(ModelNotFoundError):
        resolve_model(models_dir=tmp_path)  # as in an image without torch and the weights
    alone = OnnxEmbedder(models_dir=tmp_path)
    assert alone.path is None and alone.name == "all-MiniLM-L6-v2"
    text = ["Which planet is closest to the sun?"]
    assert float((alone.embed(text) * model.embed(text)).sum()) > 0.99999
    with pytest.raises(ModelNotFoundError):
        OnnxEmbedder(models_dir=tmp_path / "empty")
