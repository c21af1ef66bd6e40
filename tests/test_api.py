"""The public surface: exported names, import side effects, keys and model resolution."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import semcache
from semcache import CacheRequest, ModelNotFoundError, resolve_model
from semcache.keys import exact_key, fingerprint, normalize_prompt


def test_exported_names_are_pinned() -> None:
    assert set(semcache.__all__) == {
        "DEFAULT_MIN_SIMILARITY",
        "CacheConfig",
        "CacheLockedError",
        "CacheRequest",
        "ConfigError",
        "CorruptEntryError",
        "Decision",
        "Embedder",
        "Hit",
        "InvalidRequestError",
        "ModelNotFoundError",
        "Reason",
        "Scope",
        "SemanticCache",
        "SemcacheError",
        "SentenceTransformerEmbedder",
        "StoreError",
        "resolve_model",
    }


def test_importing_loads_no_model_and_configures_no_logging() -> None:
    code = (
        "import logging, sys, semcache;"
        "assert 'sentence_transformers' not in sys.modules;"
        "assert 'torch' not in sys.modules;"
        "assert not logging.getLogger().handlers;"
        "assert not logging.getLogger('semcache').handlers"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_normalisation_ignores_case_spacing_width_and_trailing_punctuation() -> None:
    assert (
        normalize_prompt("  What is  the CAPITAL of France?? ") == "what is the capital of france"
    )
    assert normalize_prompt("ＡＢＣ") == "abc"
    assert normalize_prompt("???") == "???"
    assert normalize_prompt("2 + 2 = ?") == "2 + 2 ="


# Letters, digits, spaces of several kinds, format characters, characters whose
# compatibility form holds a space (U+00A8, U+FDFA) or several letters (U+FB01), combining
# marks, trailing punctuation.
_TRICKY = "aZé9 \t\n\u3000\xa0\u200b\u00ad\u00a8\ufdfa\ufb01\u0301Ａ?!.。_-"


@given(st.text(alphabet=_TRICKY, max_size=60), st.integers(min_value=1, max_value=8))
def test_a_long_prompt_read_in_pieces_normalises_as_one(text: str, chunk: int) -> None:
    """Prompts of megabytes are normalised piece by piece (so that no single call holds the
    interpreter for long); the pieces must join to what the whole text gives."""
    assert normalize_prompt(text, chunk=chunk) == _normalised_in_one_go(text)


def _normalised_in_one_go(text: str) -> str:
    """The normalisation spelt out character by character, as the exact tier first did it."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"[\s?!.。？！]+$", "", text) or text


def test_scope_fingerprint_is_canonical_and_separates_contexts() -> None:
    assert fingerprint({"a": 1, "b": 0.5}) == fingerprint({"b": 0.5, "a": 1.0})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint({"history": ["x", "y"]}) != fingerprint({"history": ["y", "x"]})
    one = CacheRequest(prompt="hi", namespace="a")
    other = CacheRequest(prompt="hi", namespace="b")
    assert one.scope != other.scope
    assert one.exact_key != other.exact_key
    assert exact_key(one.scope, "Hi!") == one.exact_key


def test_model_resolution_prefers_a_path_then_models_dir_then_the_package(
    tmp_path: Path,
) -> None:
    name, packaged = resolve_model(None, tmp_path)
    assert name == "all-MiniLM-L6-v2" and (packaged / "modules.json").is_file()
    local = tmp_path / "all-MiniLM-L6-v2"
    local.mkdir()
    (local / "modules.json").write_text("[]")
    assert resolve_model(None, tmp_path) == ("all-MiniLM-L6-v2", local.resolve())
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2", tmp_path)[1] == local.resolve()
    assert resolve_model(str(packaged), tmp_path) == ("model", packaged.resolve())


def test_a_missing_model_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="never downloaded") as info:
        resolve_model("no-such-model", tmp_path)
    assert str(tmp_path / "no-such-model") in str(info.value)


def test_real_model_gives_unit_float32_vectors(model: semcache.SentenceTransformerEmbedder) -> None:
    vectors = model.embed(["hello world", "a second, longer sentence about caching"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert model.name == "all-MiniLM-L6-v2" and model.max_tokens == 256
