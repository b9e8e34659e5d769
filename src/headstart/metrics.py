"""Classification metrics in plain NumPy (no heavy imports on the predict path)."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], *, predictions: bool = False
) -> dict[str, object]:
    """Accuracy, macro-F1 and balanced accuracy (over classes present) with their 95 % intervals, per-class
    precision/recall/F1/support, confusion matrix; with `predictions`, each item's predicted class index
    too (in the split's order), so two runs on the same items can be compared pair by pair."""
    from headstart.intervals import score_intervals

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k = len(classes)
    cm = confusion(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    return {
        "n": len(y_true),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        # the mean recall over the classes present: what selects when the classes are skewed (imbalance)
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
        **score_intervals(y_true, y_pred, k),
        **({"pred": y_pred.astype(int).tolist(), "true": y_true.astype(int).tolist()} if predictions else {}),
    }


def likelihood_evidence(logits: np.ndarray, y_true: np.ndarray) -> dict[str, object]:
    """What compare's paired likelihood test reads from a run's val split: each item's NLL under the run's
    logits tempered on these items (`nll_tempered`, in the split's order) and that temperature."""
    from headstart.calibration import tempered_nll

    t, per_item = tempered_nll(logits, y_true)
    return {"nll_tempered": [round(float(v), 6) for v in per_item], "temperature_compare": t}


def knn_predict(
    train_X: np.ndarray, train_y: np.ndarray, X: np.ndarray, n_classes: int, k: int = 5
) -> np.ndarray:
    """Cosine k-nearest-neighbour vote (similarity-weighted): a second, model-free transfer signal."""

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    k = max(1, min(k, len(train_X)))
    sims = unit(X) @ unit(train_X).T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(X), n_classes))
    rows = np.arange(len(X))[:, None]
    np.add.at(votes, (np.broadcast_to(rows, idx.shape), train_y[idx]), np.maximum(sims[rows, idx], 0) + 1e-6)
    return votes.argmax(axis=1)
