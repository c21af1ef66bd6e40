"""The second stage of a lookup: how likely a candidate's answer is right for the query.

Cosine similarity ranks candidates but does not separate "same question, other words" from
"same words, other question" well enough to serve answers on it alone. A verifier reads each
(query, candidate) pair that the first stage let through and returns a calibrated probability
that one answer serves both; the cache serves the most probable candidate when that probability
reaches ``min_confidence``.

Two kinds, both trained by ``models/verifier/train.py`` on labelled paraphrase pairs:

- :class:`PairVerifier`, the default (``multi-mlp-v2``): a small network over features of both
  embeddings (their element-wise product and difference) and of both texts. Tens of
  microseconds per pair.
- :class:`CrossEncoderVerifier`: a cross-encoder that reads both texts together, for a model
  trained with ``--kind cross``. A few milliseconds per pair; the one trained here was no
  better than the pair network (models/verifier/README.md), so none is shipped.

Each artefact names the embedding model whose candidates it was trained on, the similarity
floor it was calibrated behind and its default ``min_confidence``; it is used only with that
embedding model (see :func:`resolve_verifier`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from numpy.typing import NDArray

from semcache.errors import ConfigError, ModelNotFoundError
from semcache.memo import text_memo
from semcache.policy import content_words, swapped_order, tokens_of

logger = logging.getLogger("semcache")

FEATURE_VERSION = 1
DEFAULT_VERIFIER = "multi-mlp-v2"
CARD_FILE = "verifier.json"


class Verifier(Protocol):
    """What the cache needs from a verifier."""

    name: str
    embedder: str  # the embedding model whose candidates it was trained on
    min_similarity: float  # the first-stage floor it was calibrated behind
    min_confidence: float  # its default operating point

    def probabilities(
        self,
        queries: Sequence[str],
        candidates: Sequence[str],
        query_vectors: NDArray[np.float32],
        candidate_vectors: NDArray[np.float32],
    ) -> NDArray[np.float64]:
        """Calibrated probability, per pair, that the candidate's answer is right for the
        query. Vectors are the L2-normalised embeddings of both sides."""
        ...


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
    return out


_QUESTION_WORDS = (
    "what", "why", "how", "when", "where", "who", "which", "whom", "whose", "is", "are", "can",
    "do", "does", "should", "will", "would", "could",
)  # fmt: skip


@dataclass(frozen=True)
class _Text:
    tokens: tuple[str, ...]
    content: tuple[str, ...]  # tokens that are not stopwords, in order
    question_word: str


@text_memo()
def _text(text: str) -> _Text:
    tokens = tokens_of(text)
    question_word = next((t for t in tokens if t in _QUESTION_WORDS), "")
    return _Text(tokens=tokens, content=content_words(text), question_word=question_word)


LEXICAL_FEATURES = (
    "token_jaccard",
    "content_jaccard",
    "content_only_query",
    "content_only_candidate",
    "length_ratio",
    "same_question_word",
    "bigram_overlap",
    "same_first_content",
    "swapped_order",
)


def lexical_features(query: str, candidate: str) -> list[float]:
    """The values named in :data:`LEXICAL_FEATURES`, each in [0, 1]."""
    q, c = _text(query), _text(candidate)
    tq, tc = set(q.tokens), set(c.tokens)
    cq, cc = set(q.content), set(c.content)
    bq = set(zip(q.tokens, q.tokens[1:], strict=False))
    bc = set(zip(c.tokens, c.tokens[1:], strict=False))
    return [
        _jaccard(tq, tc),
        _jaccard(cq, cc),
        len(cq - cc) / max(len(cq), 1),
        len(cc - cq) / max(len(cc), 1),
        min(len(q.tokens), len(c.tokens)) / max(len(q.tokens), len(c.tokens), 1),
        float(q.question_word == c.question_word),
        _jaccard(bq, bc),
        float(bool(q.content) and bool(c.content) and q.content[0] == c.content[0]),
        float(swapped_order(query, candidate)),
    ]


def _jaccard(x: AbstractSet[Hashable], y: AbstractSet[Hashable]) -> float:
    return len(x & y) / len(x | y) if x or y else 1.0


def pair_features(
    queries: Sequence[str],
    candidates: Sequence[str],
    query_vectors: NDArray[np.float32],
    candidate_vectors: NDArray[np.float32],
) -> NDArray[np.float32]:
    """One row per pair: ``u * v``, ``|u - v|``, the cosine, then the lexical features.

    The vectors must be L2-normalised (as the cache stores them)."""
    u = np.asarray(query_vectors, dtype=np.float32)
    v = np.asarray(candidate_vectors, dtype=np.float32)
    cosine = np.sum(u * v, axis=1, keepdims=True)
    lexical = np.array(
        [lexical_features(q, c) for q, c in zip(queries, candidates, strict=True)],
        dtype=np.float32,
    ).reshape(len(queries), len(LEXICAL_FEATURES))
    return np.hstack([u * v, np.abs(u - v), cosine, lexical])


class PairVerifier:
    """A small ReLU network over :func:`pair_features`, then a Platt map to a probability."""

    def __init__(
        self,
        *,
        name: str,
        embedder: str,
        weights: Sequence[NDArray[np.float32]],
        biases: Sequence[NDArray[np.float32]],
        mean: NDArray[np.float32],
        scale: NDArray[np.float32],
        platt: tuple[float, float] = (1.0, 0.0),
        min_similarity: float = 0.7,
        min_confidence: float = 0.5,
    ) -> None:
        if len(weights) != len(biases) or not weights:
            raise ConfigError(f"verifier {name}: layers and biases do not match")
        self.name = name
        self.embedder = embedder
        self.weights = [np.asarray(w, dtype=np.float32) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float32) for b in biases]
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        self.platt = (float(platt[0]), float(platt[1]))
        self.min_similarity = min_similarity
        self.min_confidence = min_confidence

    def logits(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """The network's raw score per row of :func:`pair_features`."""
        x: NDArray[Any] = (np.asarray(features, dtype=np.float32) - self.mean) / self.scale
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            x = np.maximum(x @ weight + bias, 0.0)
        out: NDArray[np.float32] = (x @ self.weights[-1] + self.biases[-1])[:, 0]
        return out

    def probabilities(
        self,
        queries: Sequence[str],
        candidates: Sequence[str],
        query_vectors: NDArray[np.float32],
        candidate_vectors: NDArray[np.float32],
    ) -> NDArray[np.float64]:
        if not queries:
            return np.empty(0)
        features = pair_features(queries, candidates, query_vectors, candidate_vectors)
        a, b = self.platt
        return _sigmoid(a * self.logits(features).astype(np.float64) + b)

    def save(self, path: Path, card: dict[str, Any] | None = None) -> None:
        """Write the artefact to ``path`` (``.npz``) and its model card beside it (``.json``)."""
        arrays: dict[str, NDArray[Any]] = {"mean": self.mean, "scale": self.scale}
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"] = weight
            arrays[f"b{i}"] = bias
        header = {
            "kind": "pair-mlp",
            "name": self.name,
            "embedder": self.embedder,
            "feature_version": FEATURE_VERSION,
            "layers": len(self.weights),
            "platt": list(self.platt),
            "min_similarity": self.min_similarity,
            "min_confidence": self.min_confidence,
        }
        arrays["header"] = np.frombuffer(orjson.dumps(header), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            np.savez_compressed(file, **arrays)  # type: ignore[arg-type]
        if card is not None:
            path.with_suffix(".json").write_bytes(
                orjson.dumps({**header, **card}, option=orjson.OPT_INDENT_2)
            )

    @classmethod
    def load(cls, path: Path) -> PairVerifier:
        """Read an artefact written by :meth:`save`.

        Raises:
            ModelNotFoundError: no file at ``path``.
            ConfigError: the file is not a verifier artefact this version can use.
        """
        if not path.is_file():
            raise ModelNotFoundError(f"no verifier artefact at {path}")
        try:
            with np.load(path) as data:
                header = orjson.loads(data["header"].tobytes())
                layers = int(header["layers"])
                weights = [data[f"w{i}"] for i in range(layers)]
                biases = [data[f"b{i}"] for i in range(layers)]
                mean, scale = data["mean"], data["scale"]
        except (OSError, ValueError, KeyError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is not a verifier artefact: {exc}") from exc
        if header.get("feature_version") != FEATURE_VERSION:
            raise ConfigError(
                f"verifier {path} uses features v{header.get('feature_version')}, this version "
                f"computes v{FEATURE_VERSION}; retrain it (models/verifier/README.md)"
            )
        return cls(
            name=str(header["name"]),
            embedder=str(header["embedder"]),
            weights=weights,
            biases=biases,
            mean=mean,
            scale=scale,
            platt=(float(header["platt"][0]), float(header["platt"][1])),
            min_similarity=float(header["min_similarity"]),
            min_confidence=float(header["min_confidence"]),
        )


class CrossEncoderVerifier:
    """A fine-tuned cross-encoder in a directory (transformers format, stored in float16) with
    its ``verifier.json``: the Platt map, the embedding model and the operating point.

    The network is loaded on first use, once per process; calls are serialised (torch already
    uses every core for one batch)."""

    def __init__(self, directory: Path, card: Mapping[str, Any] | None = None) -> None:
        """``card`` replaces ``verifier.json`` (training, before there is one)."""
        card_path = directory / CARD_FILE
        if card is None and not card_path.is_file():
            raise ModelNotFoundError(f"no verifier at {directory} ({CARD_FILE} missing)")
        try:
            if card is None:
                card = orjson.loads(card_path.read_bytes())
            assert card is not None
            self.name = str(card["name"])
            self.embedder = str(card["embedder"])
            self.platt = (float(card["platt"][0]), float(card["platt"][1]))
            self.min_similarity = float(card["min_similarity"])
            self.min_confidence = float(card["min_confidence"])
            self.max_tokens = int(card["max_pair_tokens"])
        except (OSError, KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"{card_path} is not a verifier card: {exc}") from exc
        self.directory = directory

    def logits(self, queries: Sequence[str], candidates: Sequence[str]) -> NDArray[np.float64]:
        import torch

        model, tokenizer, lock = _load_cross_encoder(self.directory)
        with lock:
            encoded = tokenizer(
                list(queries),
                list(candidates),
                truncation=True,
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                out = model(**encoded).logits[:, 0].float().numpy()
        return np.asarray(out, dtype=np.float64)

    def probabilities(
        self,
        queries: Sequence[str],
        candidates: Sequence[str],
        query_vectors: NDArray[np.float32],
        candidate_vectors: NDArray[np.float32],
    ) -> NDArray[np.float64]:
        if not queries:
            return np.empty(0)
        a, b = self.platt
        return _sigmoid(a * self.logits(queries, candidates) + b)


@functools.cache
def _load_cross_encoder(directory: Path) -> tuple[Any, Any, threading.Lock]:
    """The network and tokenizer in ``directory``, loaded once per process and shared by every
    cache that uses them, with the lock that serialises their use."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(directory), local_files_only=True
        )
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load the verifier in {directory}: {exc}") from exc
    return model.float().eval(), tokenizer, threading.Lock()


def load_verifier(location: Path) -> Verifier:
    """The verifier at ``location``: a cross-encoder directory or a ``.npz`` pair network.

    Raises:
        ModelNotFoundError: nothing usable at ``location``.
        ConfigError: the artefact is damaged or of another version.
    """
    if location.is_dir():
        return CrossEncoderVerifier(location)
    if location.suffix == ".npz" or location.with_suffix(".npz").is_file():
        return PairVerifier.load(location.with_suffix(".npz"))
    raise ModelNotFoundError(f"no verifier at {location}")


def resolve_verifier(spec: str | None, embedder: str, models_dir: Path) -> Verifier | None:
    """The verifier a cache uses.

    ``None`` or ``"none"``: no verifier, the similarity threshold alone decides. ``"auto"``:
    the project's default verifier when it was trained for ``embedder``, else none (a verifier
    judges the candidates of the model it was trained behind). Anything else is a name under
    ``models_dir/verifier/`` or a path, and must match ``embedder``.

    Raises:
        ModelNotFoundError: a named verifier does not exist.
        ConfigError: it exists but was trained for another embedding model.
    """
    if spec is None or spec == "none":
        return None
    auto = spec == "auto"
    name = DEFAULT_VERIFIER if auto else spec
    path = Path(name)
    if not path.exists():
        path = models_dir / "verifier" / name
    if auto and not (path.is_dir() or path.with_suffix(".npz").is_file()):
        logger.warning(
            "no hit verifier at %s: hits are decided by similarity alone (see "
            "models/verifier/README.md to build it, or set SEMCACHE_MODELS_DIR)",
            path,
        )
        return None
    verifier = load_verifier(path)
    if verifier.embedder != embedder:
        if auto:
            return None
        raise ConfigError(
            f"verifier {verifier.name} was trained behind the embedding model "
            f"{verifier.embedder}, but this cache embeds with {embedder}; use verifier='none' "
            f"or train one for this model (models/verifier/README.md)"
        )
    return verifier
