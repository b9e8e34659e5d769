"""Rank backbones for a dataset in seconds, from frozen embeddings only (one cached pass per backbone).

Three scores per backbone, all on the labeled train+val items (test is left untouched):
- LogME (You et al., ICML 2021): evidence of a Bayesian linear model, no training, no hyper-parameters;
- kNN leave-one-out accuracy (cosine, similarity-weighted vote);
- linear-probe accuracy by stratified k-fold cross-validation (best C of headstart.head's path).
Rows are sorted by LogME. Each row also carries an estimate of what fine-tuning that backbone would cost
(one measured training step x the steps of a default fine-tune), the figure the ranking saves.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError

KNN_K = 5
PROBE_FOLDS = 5
# The fine-tune the estimate prices: 10 epochs of batches of 32 over the training split.
FINETUNE_EPOCHS = 10
FINETUNE_BATCH = 32


def knn_loo_accuracy(X: np.ndarray, y: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out accuracy of a cosine kNN (similarity-weighted vote): each item voted on by the others."""
    n = len(y)
    if n < 2:
        return float("nan")
    U = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    sims = U @ U.T
    np.fill_diagonal(sims, -np.inf)  # an item is not its own neighbour
    k = max(1, min(k, n - 1))
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    rows = np.arange(n)[:, None]
    votes = np.zeros((n, int(y.max()) + 1))
    np.add.at(votes, (np.broadcast_to(rows, idx.shape), y[idx]), np.maximum(sims[rows, idx], 0) + 1e-6)
    return float((votes.argmax(axis=1) == y).mean())


def probe_cv_accuracy(
    X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0, folds: int = PROBE_FOLDS
) -> tuple[float, float]:
    """(cross-validated accuracy at the best C of the default path, that C)."""
    from headstart.head import fit_head

    _, C, scores = fit_head(X, y, n_classes, cv=folds, seed=seed)
    return (float(scores[C]) if scores else float("nan")), float(C)


def finetune_step_seconds(backbone: Any, batch_size: int = FINETUNE_BATCH, repeats: int = 2) -> float:
    """Median wall time of one full training step (forward, backward through every layer, SGD update)
    of `backbone` plus a linear head, on a random batch at its input size (decoding not included)."""
    import copy

    import torch

    if backbone.modality != "image":
        raise HeadstartError(f"step timing supports image backbones, not {backbone.modality}")
    model = copy.deepcopy(backbone).train()
    head = torch.nn.Linear(backbone.embed_dim, 10)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    x = torch.randn(batch_size, *backbone.example_input(1).shape[1:])
    t = torch.randint(0, 10, (batch_size,))
    times = []
    for _ in range(repeats + 1):  # the first step pays one-time allocations; not counted
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(model(x)), t).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def rank_backbones(
    data: str | Path,
    backbones: list[str],
    *,
    seed: int = 0,
    progress: bool = True,
    knn_k: int = KNN_K,
    probe_folds: int = PROBE_FOLDS,
    estimate_finetune: bool = True,
    backend: str = "auto",
    batch_size: int = 32,
    cache: bool = True,
) -> list[dict[str, Any]]:
    """One row per backbone, best LogME first. See the module docstring for what each score means.

    Row keys: backbone, logme, knn_accuracy, probe_cv_accuracy, probe_C, n, dim, embed_s, forwards,
    score_s, rank_s (= embed_s + score_s), finetune_step_s, finetune_steps, finetune_estimate_s.
    """
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed
    from headstart.verdicts.logme import logme

    if not backbones:
        raise HeadstartError("no backbones to rank", fix="name at least one, e.g. --backbones a,b")
    ds = load_dataset(data, seed=seed)
    labeled = [it for it in ds.items if it.split in ("train", "val")]
    n_train = len(ds.split("train"))
    index = {c: i for i, c in enumerate(ds.classes)}
    rows = []
    for name in backbones:
        t0 = time.perf_counter()
        bb = create_backbone(name)
        feats = embed(
            bb,
            [it.source for it in labeled],
            cache=cache,
            backend=backend,
            batch_size=batch_size,
            progress=progress,
        )
        embed_s = time.perf_counter() - t0
        label_of = {it.source: index[it.label] for it in labeled}
        y = np.array([label_of[p] for p in feats.paths], dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise HeadstartError(f"{data}: fewer than two classes could be read with {name}")
        t0 = time.perf_counter()
        score = logme(feats.X, y)
        knn = knn_loo_accuracy(feats.X, y, knn_k)
        probe_acc, C = probe_cv_accuracy(feats.X, y, len(ds.classes), seed, probe_folds)
        score_s = time.perf_counter() - t0
        step_s = finetune_step_seconds(bb) if estimate_finetune else None
        steps = math.ceil(n_train / FINETUNE_BATCH) * FINETUNE_EPOCHS
        rows.append(
            {
                "backbone": bb.name,
                "logme": score,
                "knn_accuracy": knn,
                "probe_cv_accuracy": probe_acc,
                "probe_C": C,
                "n": len(y),
                "dim": int(feats.X.shape[1]),
                "embed_s": embed_s,
                "forwards": int(feats.stats["forwards"]),
                "score_s": score_s,
                "rank_s": embed_s + score_s,
                "finetune_step_s": step_s,
                "finetune_steps": steps,
                "finetune_estimate_s": None if step_s is None else step_s * steps,
                "skipped": feats.bad,
            }
        )
    return sorted(rows, key=lambda r: -r["logme"])


def ranking_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Total time of the ranking against the estimated cost of fine-tuning every backbone."""
    rank_s = float(sum(r["rank_s"] for r in rows))
    est = [r["finetune_estimate_s"] for r in rows]
    finetune_s = float(sum(est)) if est and all(e is not None for e in est) else None
    return {
        "rank_s": rank_s,
        "finetune_estimate_s": finetune_s,
        "estimated_speedup": None if finetune_s is None or rank_s <= 0 else finetune_s / rank_s,
        "estimate": f"one measured training step x ceil(n_train / {FINETUNE_BATCH}) x {FINETUNE_EPOCHS} "
        "epochs per backbone (decoding, evaluation and early stopping not included)",
    }
