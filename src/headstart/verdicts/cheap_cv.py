"""Scores of the cheap rows (probe, kNN) by repeated stratified k-fold over train+val on cached
embeddings: seconds of work, and an estimate from every labeled item instead of one small val split.

The probe's L2 strength is the one chosen on val (refitting its path inside every fold would multiply the
cost by the path's length); that makes the CV score slightly optimistic, which the docs say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from headstart.head import fit_path, stratified_folds
from headstart.intervals import wilson
from headstart.metrics import knn_predict

CV_FOLDS, CV_REPEATS = 5, 3


def n_cv_folds(y: np.ndarray, n_classes: int, folds: int = CV_FOLDS) -> int:
    """`folds`, or fewer when the rarest class has fewer items (below 2: no cross-validation)."""
    return int(min(folds, np.bincount(y, minlength=n_classes)[np.unique(y)].min()))


def cv_hits(
    X: np.ndarray, y: np.ndarray, n_classes: int, *, C: float, n_folds: int, seed: int, knn: bool = True
) -> dict[str, np.ndarray]:
    """One stratified k-fold pass: {"probe", "knn"}: whether each item was predicted right by a model
    that never saw it (the same folds for the same `seed`, so two feature sets compare item by item)."""
    hit = {"probe": np.zeros(len(y), bool), **({"knn": np.zeros(len(y), bool)} if knn else {})}
    for held in stratified_folds(y, n_folds, seed):
        train = np.setdiff1d(np.arange(len(y)), held)
        head = fit_path(X[train], y[train], n_classes, (C,))[0]
        hit["probe"][held] = head.proba(X[held]).argmax(1) == y[held]
        if knn:
            hit["knn"][held] = knn_predict(X[train], y[train], X[held], n_classes) == y[held]
    return hit


def repeated_cv(
    X: np.ndarray, y: np.ndarray, n_classes: int, *, C: float, folds: int, repeats: int, seed: int = 0
) -> dict[str, Any]:
    """{"probe": {...}, "knn": {...}, "scheme"}: each with the mean accuracy over repeats and a Wilson
    interval on the n items (every item is predicted once per repeat, by a model that never saw it)."""
    n_folds = n_cv_folds(y, n_classes, folds)
    if n_folds < 2:
        return {}
    correct = {"probe": [], "knn": []}
    for r in range(repeats):
        hit = cv_hits(X, y, n_classes, C=C, n_folds=n_folds, seed=seed + r)
        for k in correct:
            correct[k].append(int(hit[k].sum()))
    out: dict[str, Any] = {"scheme": f"{repeats}x{n_folds}-fold over train+val ({len(y)} items)"}
    for k, counts in correct.items():
        mean = float(np.mean(counts))
        out[k] = {"accuracy": mean / len(y), "accuracy_ci": list(wilson(round(mean), len(y)))}
    return out


def probe_cv(p: Any, data: str | Path, backbone: str, seed: int, device: str = "auto") -> dict[str, Any]:
    """Repeated k-fold of the probe and kNN over train+val, on the embeddings the probe just cached."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed

    ds = load_dataset(data, seed=seed)
    items = [it for it in ds.items if it.split in ("train", "val")]
    feats = embed(create_backbone(backbone), [it.source for it in items], progress=False, device=device)
    row = {src: i for i, src in enumerate(feats.paths)}
    items = [it for it in items if it.source in row]
    index = {c: i for i, c in enumerate(ds.classes)}
    X = feats.X[[row[it.source] for it in items]]
    y = np.array([index[it.label] for it in items], dtype=np.int64)
    return repeated_cv(
        X, y, len(ds.classes), C=float(p.metrics["C"]), folds=CV_FOLDS, repeats=CV_REPEATS, seed=seed
    )
