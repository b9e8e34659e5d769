"""Scores of the cheap rows (probe, kNN) by repeated stratified k-fold over train+val on cached
embeddings: seconds of work, and an estimate from every labeled item instead of one small val split.

The probe's L2 strength is the one chosen on val (refitting its path inside every fold would multiply the
cost by the path's length); that makes the CV score slightly optimistic, which the docs say.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.head import fit_head, fit_path, stratified_folds
from headstart.intervals import wilson
from headstart.metrics import knn_predict

CV_FOLDS, CV_REPEATS = 5, 3
#: The seed offset between the test's passes (pass r draws its folds with seed + r * PASS_SEED_STEP).
PASS_SEED_STEP = 1000


def n_cv_folds(y: np.ndarray, n_classes: int, folds: int = CV_FOLDS) -> int:
    """`folds`, or fewer when the rarest class has fewer items (below 2: no cross-validation)."""
    return int(min(folds, np.bincount(y, minlength=n_classes)[np.unique(y)].min()))


def cv_hits(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    C: float,
    n_folds: int,
    seed: int,
    knn: bool = True,
    views: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One stratified k-fold pass: {"probe", "knn"}: whether each item was predicted right by a model
    that never saw it (the same folds for the same `seed`, so two feature sets compare item by item);
    "probe_logits": those out-of-fold logits (the paired likelihood test tempers them:
    `paired_head_hits`). `views` (n, K, D): augmented views
    of each item (headstart.views); a fold's head trains on its items' originals and views, and predicts
    the held-out originals."""
    from headstart.views import with_views

    hit = {"probe": np.zeros(len(y), bool), **({"knn": np.zeros(len(y), bool)} if knn else {})}
    logits = np.zeros((len(y), n_classes))
    for held in stratified_folds(y, n_folds, seed):
        train = np.setdiff1d(np.arange(len(y)), held)
        X_fit, y_fit = (X[train], y[train]) if views is None else with_views(X[train], y[train], views[train])
        head = fit_path(X_fit, y_fit, n_classes, (C,))[0]
        logits[held] = head.logits(X[held])
        hit["probe"][held] = logits[held].argmax(1) == y[held]
        if knn:
            hit["knn"][held] = knn_predict(X[train], y[train], X[held], n_classes) == y[held]
    hit["probe_logits"] = logits
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

    tv = embedded_train_val(data, {backbone: create_backbone(backbone)}, seed, device)
    C = float(p.metrics["C"])
    return repeated_cv(tv.X[backbone], tv.y, tv.n_classes, C=C, folds=CV_FOLDS, repeats=CV_REPEATS, seed=seed)


@dataclass
class TrainVal:
    """The train+val items that every one of several backbones embedded, in one order: their labels, and
    each backbone's features and content hashes of them (keyed as the caller keyed the backbones)."""

    sources: list[str]
    y: np.ndarray
    n_classes: int
    X: dict[Any, np.ndarray]
    hashes: dict[Any, list[str]]

    @property
    def n_folds(self) -> int:
        return n_cv_folds(self.y, self.n_classes)


def embedded_train_val(
    data: str | Path, backbones: dict[Any, Any], seed: int, device: str = "auto", progress: bool = False
) -> TrainVal:
    """`data`'s train+val items through each backbone's cached embedding, aligned on the items all of them
    could read (the k-fold comparisons of frozen heads and of input sizes pair on them)."""
    from headstart.data import load_dataset
    from headstart.features import embed

    ds = load_dataset(data, seed=seed)
    items = [it for it in ds.items if it.split in ("train", "val")]
    sources = [it.source for it in items]
    feats = {k: embed(bb, sources, progress=progress, device=device) for k, bb in backbones.items()}
    rows = {k: {src: i for i, src in enumerate(f.paths)} for k, f in feats.items()}
    items = [it for it in items if all(it.source in r for r in rows.values())]
    index = {c: i for i, c in enumerate(ds.classes)}
    at = {k: [rows[k][it.source] for it in items] for k in feats}
    return TrainVal(
        sources=[it.source for it in items],
        y=np.array([index[it.label] for it in items], dtype=np.int64),
        n_classes=len(ds.classes),
        X={k: feats[k].X[at[k]] for k in feats},
        hashes={k: [feats[k].hashes[i] for i in at[k]] for k in feats},
    )


def paired_head_hits(
    data: str | Path, heads: dict[str, tuple[str, float, int]], seed: int, device: str = "auto"
) -> dict[str, dict[str, np.ndarray]]:
    """{row: {"correct", "nll"}: each train+val item's correctness and tempered NLL} for frozen heads
    (row -> (backbone, C, augmented views per item)), on the same items (those every backbone embedded),
    through the cache their runs filled. A paired test on these uses every labeled item, not the val split
    alone. Every head runs `select.TEST_PASSES` stratified k-fold passes, pass r on the same folds for
    every head; "nll" is each item's mean tempered NLL over the passes (each item still counts once in the
    test, and the luck of one fold draw averages out), "correct" the first pass's right/wrong. A head
    without views gets its L2 strength by CV on these items (the run's was chosen on a few dozen val items,
    too noisy for 2,000 features): slightly optimistic, alike for every head."""
    from headstart.backbones import create_backbone
    from headstart.calibration import tempered_nll
    from headstart.views import embed_views

    bbs = {k: create_backbone(b) for k, (b, _, _) in heads.items()}
    tv = embedded_train_val(data, bbs, seed, device)
    n_folds = tv.n_folds
    if n_folds < 2:
        return {}
    out = {}
    for k, (_, C, n_views) in heads.items():
        V = None
        if n_views:  # the run's views of its training items are cache hits; val items' are new
            V, _ = embed_views(
                bbs[k], tv.sources, tv.hashes[k], n_views, seed=seed, progress=False, device=device
            )
        else:  # the L2 strength for these features by CV, not the run's pick on a few val items
            C = fit_head(tv.X[k], tv.y, tv.n_classes, cv=n_folds, seed=seed)[1]
        passes = [
            cv_hits(tv.X[k], tv.y, tv.n_classes, C=C, n_folds=n_folds, seed=s, knn=False, views=V)
            for s in pass_seeds(seed)
        ]
        nll = np.mean([tempered_nll(h["probe_logits"], tv.y)[1] for h in passes], axis=0)
        out[k] = {"correct": passes[0]["probe"], "nll": nll}
    return out


def pass_seeds(seed: int) -> list[int]:
    """The fold seeds of the frozen heads' test passes (the first is `seed`: its folds as before)."""
    from headstart.verdicts.select import TEST_PASSES

    return [seed + r * PASS_SEED_STEP for r in range(TEST_PASSES)]


def frozen_head_hits(rows: list[dict[str, Any]], data: str | Path, seed: int, device: str) -> dict[str, Any]:
    """Of compare's `rows`, the frozen heads that ran (the probe and HEAD_STRATEGIES): each train+val item's
    k-fold correctness and tempered NLL on the same folds (`paired_head_hits`), so their test against the
    probe uses every labeled item."""
    import json

    from headstart.runs import METRICS_FILE, load_run_info
    from headstart.verdicts.select import PROBE, frozen_head

    heads = {}
    for row in rows:
        run = Path(row["run_dir"]) if row.get("run_dir") else None
        if (
            (row["strategy"] == PROBE or frozen_head(row["strategy"]))
            and run is not None
            and (run / METRICS_FILE).is_file()
        ):
            C = json.loads((run / METRICS_FILE).read_text()).get("C")
            info = load_run_info(run)
            if C is not None:
                heads[row["strategy"]] = (info.backbone.name, C, int((info.recipe or {}).get("views") or 0))
    return paired_head_hits(data, heads, seed, device) if len(heads) > 1 else {}
