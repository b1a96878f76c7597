"""Classification metrics from probabilities and gold ids (scikit-learn does the arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(gold: Sequence[int], probs: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro / weighted F1, per-class P/R/F1, confusion matrix and cross-entropy loss."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y = np.asarray(gold, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    eps = 1e-12
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)))) if len(y) else float("nan")
    return {
        "rows": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=ids, average="weighted", zero_division=0)),
        "loss": loss,
        "per_class": {
            str(n): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, n in enumerate(names)
        },
        "confusion_matrix": {"labels": list(map(str, names)),
                             "matrix": confusion_matrix(y, pred, labels=ids).tolist()},
    }


def trainer_metrics(eval_pred: Any) -> dict[str, float]:
    """compute_metrics for the Trainer: labels and logits arrive in the same (possibly length-grouped) order."""
    from sklearn.metrics import f1_score

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    pred = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
