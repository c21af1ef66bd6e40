"""The embedding model on ONNX Runtime: the same vectors as sentence-transformers, in less time.

The graph is exported once, from the same local weights the torch path loads (never from a hub),
into ``<models_dir>/onnx/<model>/``: at install time (``semcache models export``, which ``make
install`` and the Dockerfile run), or on first use when that was skipped. Exporting needs torch
and the ``onnx`` package; serving needs only ``onnxruntime``, ``tokenizers`` and numpy.

What the export holds: the transformer's ``last_hidden_state``. Pooling (the mean over real
tokens) and normalisation are done here in numpy, as the model's ``1_Pooling`` asks. A
``export.json`` beside the graph names the weights it came from (path, size, modification
time); when they change, the graph is exported again.

Speed comes from three choices, measured by ``benchmarks/embedding_bench.py``:

- one intra-op thread per call while other calls run, and no spinning: on a busy host a
  thread that spins for a sibling descheduled by someone else's work wastes the core it waits
  on. Calls from several worker threads run at once instead (an ``InferenceSession`` is safe
  to share), up to ``parallel`` of them, so a loaded sidecar still uses every core. A call
  that runs alone (a lookup at an idle sidecar, whose client waits for it) uses a second
  session with one thread per core: 30% less time for one short prompt on 2 cores;
- texts sorted by length and run in sub-batches of at most ``SUB_BATCH_CELLS`` padded tokens,
  so a long prompt does not make 31 short ones pay for its padding;
- the tokenizer is the model's own ``tokenizer.json`` in the Rust ``tokenizers`` library,
  configured once, without padding to a fixed length.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semcache.config import DEFAULT_MODEL, default_models_dir
from semcache.embedding import Reading, read_encodings, resolve_model
from semcache.errors import ModelNotFoundError

logger = logging.getLogger("semcache")

GRAPH_FILE = "model.onnx"
RECORD_FILE = "export.json"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17
# Padded tokens (texts × longest) per forward pass. Sorted by length, short prompts still run
# 32 at a time; a 256-token one runs with a few of its neighbours in length.
SUB_BATCH_CELLS = 1024
MAX_SUB_BATCH = 32
RECENT_ENCODINGS = 256  # tokenized texts kept from read() for the embed() that follows
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_dir(name: str, models_dir: Path) -> Path:
    """Where the ONNX graph of model ``name`` lives."""
    return models_dir / "onnx" / name


def _source_record(source: Path) -> dict[str, Any]:
    weights = [p for p in sorted(source.iterdir()) if p.suffix in (".safetensors", ".bin")]
    return {
        "source": str(source),
        "weights": [
            {"file": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
            for p in weights
        ],
        "opset": OPSET,
    }


def is_exported(source: Path, target: Path) -> bool:
    """Whether ``target`` holds a graph exported from the weights in ``source`` as they are."""
    try:
        record = json.loads((target / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (target / GRAPH_FILE).is_file() and record == _source_record(source)


def export(source: Path, target: Path) -> Path:
    """Export the transformer in the sentence-transformers folder ``source`` to ``target``.

    Written to a temporary folder and renamed into place, so a reader never sees half a graph.

    Raises:
        ModelNotFoundError: torch, transformers or onnx is missing, or the export failed.
    """
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ModelNotFoundError(f"exporting to ONNX needs torch and transformers: {exc}") from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModel.from_pretrained(str(source), local_files_only=True).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    sample = torch.ones((2, 8), dtype=torch.int64)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        axes = {"batch": 0, "tokens": 1}
        # The tracer warns about shapes taken as constants that are in fact only checks.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(model),
                (sample, sample, torch.zeros_like(sample)),
                str(partial / GRAPH_FILE),
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {n: axis for axis, n in axes.items()}
                    for name in (*_INPUTS, "last_hidden_state")
                },
                opset_version=OPSET,
                dynamo=False,
            )
        for name in (TOKENIZER_FILE, "sentence_bert_config.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, partial / name)
        pooling = source / "1_Pooling" / "config.json"
        if pooling.is_file():
            shutil.copy2(pooling, partial / "pooling.json")
        (partial / RECORD_FILE).write_text(json.dumps(_source_record(source), indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelNotFoundError(f"could not export {source} to ONNX: {exc}") from exc
    logger.info("exported %s to %s", source, target)
    return target


def ensure_exported(source: Path, target: Path) -> Path:
    """``target`` when it holds the graph of ``source``; else export it there now, or, when
    that folder cannot be written, under the user's cache folder."""
    if is_exported(source, target):
        return target
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    fallback = fallback / "semcache" / "onnx" / target.name
    if is_exported(source, fallback):
        return fallback
    logger.warning(
        "no ONNX export of %s in %s; exporting it now (run 'semcache models export' at install "
        "time to skip this)",
        source.name,
        target,
    )
    try:
        return export(source, target)
    except (ModelNotFoundError, OSError) as exc:
        if not isinstance(exc, OSError) and not isinstance(exc.__cause__, OSError):
            raise
        return export(source, fallback)


def sub_batches(lengths: Sequence[int], *, cells: int, most: int) -> list[list[int]]:
    """Positions of texts grouped into passes: sorted by length, each pass holding at most
    ``most`` texts and ``cells`` padded tokens (a text longer than ``cells`` goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted, so the text being added is the longest of its pass.
        if current and (len(current) + 1 > most or (len(current) + 1) * lengths[i] > cells):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


class _Runtime:
    """A loaded graph and its tokenizer (one per graph folder and thread count per process)."""

    def __init__(self, graph_dir: Path, threads: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        _check_mean_pooling(graph_dir)
        self.graph_dir = graph_dir
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(graph_dir / GRAPH_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        tokenizer = Tokenizer.from_file(str(graph_dir / TOKENIZER_FILE))
        # The file pads every text to 128 tokens; a short prompt would pay for all of them.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.max_tokens = _max_seq_length(graph_dir)


_runtimes: dict[tuple[Path, int], _Runtime] = {}
_runtimes_lock = threading.Lock()


def _runtime(graph_dir: Path, threads: int) -> _Runtime:
    """The process's runtime of ``graph_dir`` with ``threads``; call under ``_runtimes_lock``."""
    key = (graph_dir, threads)
    if key not in _runtimes:
        _runtimes[key] = _Runtime(graph_dir, threads)
    return _runtimes[key]


class OnnxEmbedder:
    """An :class:`~semcache.embedding.Embedder` and
    :class:`~semcache.embedding.ReadingEmbedder` on ONNX Runtime, loaded on first use.

    Its name is the model's, as on the torch path: entries embedded by either are comparable
    (their vectors agree to a cosine of 0.99999), so switching backends re-embeds nothing.

    Args:
        model: a model name or folder, resolved like the torch path's
            (:func:`semcache.embedding.resolve_model`).
        models_dir: where models are looked up, and where the graph is exported to.
        threads: intra-op threads of one call made while others run.
        alone_threads: intra-op threads of a call made while no other runs (default: one per
            core); a second session of the graph is loaded for it when it differs from
            ``threads``.
        parallel: calls that may run at once (from different threads; default: one per core).
        cells: padded tokens per forward pass (see :func:`sub_batches`).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        models_dir: Path | None = None,
        threads: int = 1,
        alone_threads: int | None = None,
        parallel: int | None = None,
        cells: int = SUB_BATCH_CELLS,
    ) -> None:
        self.cells = cells
        models_dir = models_dir or default_models_dir()
        self.path: Path | None
        try:
            self._name, self.path = resolve_model(model, models_dir)
        except ModelNotFoundError:
            # An exported graph stands on its own where the weights are not installed (an
            # image that sheds torch keeps only the graph): used as it is, never re-exported.
            name = Path(model).name if model else DEFAULT_MODEL
            if not (export_dir(name, models_dir) / RECORD_FILE).is_file():
                raise
            self._name, self.path = name, None
        self.graph_dir = export_dir(self._name, models_dir)
        self.threads = threads
        self.alone_threads = max(threads, alone_threads or os.cpu_count() or 1)
        self._slots = threading.BoundedSemaphore(parallel or os.cpu_count() or 1)
        self._loaded: _Runtime | None = None
        self._alone: _Runtime | None = None
        self._running = 0  # calls in progress
        self._running_lock = threading.Lock()
        self._recent: OrderedDict[str, Any] = OrderedDict()  # text -> its tokens, from read()
        self._recent_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def runtime(self) -> _Runtime:
        """The session of a call made while others run (and the tokenizer)."""
        if self._loaded is None:
            with _runtimes_lock:
                graph_dir = (
                    self.graph_dir
                    if self.path is None
                    else ensure_exported(self.path, self.graph_dir)
                )
                self._loaded = _runtime(graph_dir, self.threads)
        return self._loaded

    @property
    def alone_runtime(self) -> _Runtime:
        """The session of a call made while no other runs."""
        if self._alone is None:
            graph_dir = self.runtime.graph_dir
            with _runtimes_lock:
                self._alone = _runtime(graph_dir, self.alone_threads)
        return self._alone

    @contextmanager
    def _call(self) -> Iterator[None]:
        """Count an :meth:`embed` call in progress, from its first pass to its last."""
        with self._running_lock:
            self._running += 1
        try:
            yield
        finally:
            with self._running_lock:
                self._running -= 1

    @contextmanager
    def _session(self) -> Iterator[_Runtime]:
        """The runtime for a pass starting now, held for its duration: every core's while no
        other call is in progress, else one thread's."""
        with self._slots:
            yield self.alone_runtime if self._running <= 1 else self.runtime

    @property
    def runtime_dir(self) -> Path:
        """The folder of the graph in use (loading it first)."""
        return self.runtime.graph_dir

    @property
    def dim(self) -> int:
        return int(self.embed(["dimension"]).shape[1])

    @property
    def max_tokens(self) -> int:
        return self.runtime.max_tokens

    def read(self, texts: Sequence[str]) -> list[Reading]:
        encodings = self.runtime.tokenizer.encode_batch(list(texts))
        with self._recent_lock:  # a lookup reads its prompt, then embeds it: tokenized once
            for text, encoding in zip(texts, encodings, strict=True):
                self._recent[text] = encoding
            while len(self._recent) > RECENT_ENCODINGS:
                self._recent.popitem(last=False)
        return read_encodings(self.runtime.tokenizer, texts, encodings)

    def _encodings(self, texts: Sequence[str]) -> list[Any]:
        with self._recent_lock:
            known = [self._recent.pop(text, None) for text in texts]
        missing = [text for text, found in zip(texts, known, strict=True) if found is None]
        fresh = iter(self.runtime.tokenizer.encode_batch(missing) if missing else [])
        return [found if found is not None else next(fresh) for found in known]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        runtime = self.runtime
        encodings = self._encodings(texts)
        lengths = [min(len(e.ids), runtime.max_tokens) for e in encodings]
        with self._call():
            out = self._passes(encodings, lengths)
        return np.empty((0, 0), np.float32) if out is None else out

    def _passes(
        self, encodings: Sequence[Any], lengths: Sequence[int]
    ) -> NDArray[np.float32] | None:
        """The vectors of ``encodings``, in length-sorted passes (``None`` for no text)."""
        out: NDArray[np.float32] | None = None
        for group in sub_batches(lengths, cells=self.cells, most=MAX_SUB_BATCH):
            width = max(lengths[i] for i in group)
            ids = np.zeros((len(group), width), np.int64)
            types = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for row, i in enumerate(group):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids[:n]
                types[row, :n] = encodings[i].type_ids[:n]
                mask[row, :n] = 1
                if n < len(encodings[i].ids):  # cut at the window: end with [SEP], as torch does
                    ids[row, n - 1] = encodings[i].ids[-1]
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            with self._session() as chosen:
                (hidden,) = chosen.session.run(
                    None, {k: v for k, v in feed.items() if k in chosen.inputs}
                )
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = np.empty((len(lengths), pooled.shape[1]), np.float32)
            out[group] = pooled
        return out


def _check_mean_pooling(graph_dir: Path) -> None:
    """Raises ModelNotFoundError unless the model pools by the mean of its tokens, the one
    pooling done here."""
    try:
        pooling = json.loads((graph_dir / "pooling.json").read_text())
    except (OSError, ValueError):
        return  # no pooling module declared: sentence-transformers' default is the mean too
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True}
    if modes != {"pooling_mode_mean_tokens"}:
        raise ModelNotFoundError(
            f"the ONNX backend pools by the mean only; {graph_dir} asks for {sorted(modes)}"
        )


def _max_seq_length(graph_dir: Path) -> int:
    try:
        config = json.loads((graph_dir / "sentence_bert_config.json").read_text())
        return int(config["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return 512
