"""Train the hit verifier: a cross-encoder that reads (query, stored prompt) and says whether
one answer serves both.

    python models/verifier/train.py [--data ../shared/data] [--pairs 30000] [--epochs 1]

Data, all from pairs_qqp_gptcache.jsonl rows with id % 10 != 0 (the test split, id % 10 == 0,
is never read here):
- fit: rows with id % 10 in 1..8, plus hard negatives generated from their questions (an entity
  or number changed, a negation added or removed, two names swapped), and each question paired
  with itself as a positive;
- calibration: rows with id % 10 == 9, on which a logistic (Platt) map from the model's logit to
  a probability is fitted.

Starts from the all-MiniLM-L6-v2 weights (the packaged ones, offline) with a fresh one-logit
head, trains with binary cross-entropy on 2 CPU cores, and writes the model in float16 with its
tokenizer and calibration to models/verifier/minilm-qqp-v1/.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from semcache.embedding import resolve_model

HERE = Path(__file__).resolve().parent
OUT = HERE / "minilm-qqp-v1"
MAX_LENGTH = 64

_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
_NEGATABLE = re.compile(r"\b(is|are|was|were|can|could|should|would|will|do|does|did)\b", re.I)
_NEGATED = re.compile(r"\b(not|n't|never|no)\b", re.I)
_NAME = re.compile(r"(?<!^)(?<![.?!] )\b[A-Z][a-zA-Z]+\b")


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def hard_negatives(text: str, rng: random.Random, names: list[str]) -> list[str]:
    """Questions close in wording to ``text`` that want a different answer."""
    out = []
    numbers = _NUMBER.findall(text)
    if numbers:
        n = rng.choice(numbers)
        other = str(int(float(n)) + rng.choice([1, 2, 5, 10, 100])) if "." not in n else n + "5"
        out.append(text.replace(n, other, 1))
    if _NEGATED.search(text):
        out.append(_NEGATED.sub("", text, count=1).replace("  ", " "))
    else:
        match = _NEGATABLE.search(text)
        if match:
            out.append(text[: match.end()] + " not" + text[match.end() :])
    found = _NAME.findall(text)
    if len(set(found)) >= 2:
        first, second = rng.sample(sorted(set(found)), 2)
        swapped = text.replace(first, "\0").replace(second, first).replace("\0", second)
        if swapped != text:
            out.append(swapped)
    if found and names:
        out.append(text.replace(rng.choice(found), rng.choice(names), 1))
    return [t for t in out if t != text]


def build_fit_set(rows: list[dict], limit: int, seed: int) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    fit = [r for r in rows if r["id"] % 10 not in (0, 9)]
    rng.shuffle(fit)
    names = sorted({n for r in fit[:20000] for n in _NAME.findall(r["a"])})
    examples: list[tuple[str, str, float]] = []
    for row in fit:
        a, b = row["a"], row["b"]
        examples.append((b, a, 1.0 if row["duplicate"] else 0.0))
        if rng.random() < 0.35:
            for negative in hard_negatives(a, rng, names)[:2]:
                examples.append((negative, a, 0.0))
        if rng.random() < 0.05:
            examples.append((a, a, 1.0))
        if len(examples) >= limit:
            break
    rng.shuffle(examples)
    return examples


def batches(examples, size):
    for start in range(0, len(examples), size):
        yield examples[start : start + size]


def logits(model, tokenizer, pairs, batch_size=128) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for chunk in batches(pairs, batch_size):
            encoded = tokenizer(
                [q for q, _ in chunk], [c for _, c in chunk],
                truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt",
            )  # fmt: skip
            out.append(model(**encoded).logits[:, 0].float().numpy())
    return np.concatenate(out)


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """p = sigmoid(a * logit + b), by Newton's method on the log loss."""
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a * scores + b)))
        grad = np.array([np.sum((p - labels) * scores), np.sum(p - labels)])
        w = p * (1 - p) + 1e-9
        hess = np.array(
            [[np.sum(w * scores * scores), np.sum(w * scores)], [np.sum(w * scores), np.sum(w)]]
        )
        step = np.linalg.solve(hess + 1e-6 * np.eye(2), grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=30_000, help="training examples")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rows = load(args.data / "pairs_qqp_gptcache.jsonl")
    examples = build_fit_set(rows, args.pairs, args.seed)
    calibration = [r for r in rows if r["id"] % 10 == 9]
    _, base = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=1, local_files_only=True
    )
    steps = math.ceil(len(examples) * args.epochs / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, s / (0.06 * steps)) * max(0.0, (steps - s) / steps)
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    print(f"{len(examples)} training examples, {steps} steps", flush=True)
    started = time.time()
    step = 0
    model.train()
    while step < steps:
        for chunk in batches(examples, args.batch_size):
            encoded = tokenizer(
                [q for q, _, _ in chunk], [c for _, c, _ in chunk],
                truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt",
            )  # fmt: skip
            labels = torch.tensor([y for _, _, y in chunk])
            loss = loss_fn(model(**encoded).logits[:, 0], labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 100 == 0:
                elapsed = time.time() - started
                print(f"step {step}/{steps} loss {loss.item():.3f} {elapsed:.0f}s", flush=True)
            if step >= steps:
                break
    scores = logits(model, tokenizer, [(r["b"], r["a"]) for r in calibration])
    labels = np.array([float(r["duplicate"]) for r in calibration])
    a, b = fit_platt(scores, labels)
    probabilities = 1 / (1 + np.exp(-(a * scores + b)))
    accuracy = float(np.mean((probabilities >= 0.5) == (labels == 1)))
    OUT.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(OUT, safe_serialization=True)
    tokenizer.save_pretrained(OUT)
    card = {
        "calibration": {"method": "platt", "a": a, "b": b, "rows": len(calibration)},
        "calibration_accuracy_at_0.5": accuracy,
        "training": {
            "examples": len(examples),
            "steps": steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "seconds": round(time.time() - started),
            "max_length": MAX_LENGTH,
        },
    }
    (OUT / "verifier.json").write_text(json.dumps(card, indent=2))
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
