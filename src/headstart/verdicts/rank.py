"""Rank backbones for a dataset in seconds, from frozen embeddings only (one cached pass per backbone).

Three scores per backbone, all on the labeled train+val items (test is left untouched):
- LogME (You et al., ICML 2021): evidence of a Bayesian linear model, no training, no hyper-parameters;
- kNN leave-one-out accuracy (cosine, similarity-weighted vote);
- linear-probe accuracy by stratified k-fold cross-validation (best C of headstart.head's path).
Rows are sorted by LogME. Each row also carries an estimate of what fine-tuning that backbone with the
`full` recipe would cost (one measured training step x the steps of that recipe), the figure the ranking
saves.
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
# The fine-tune the estimate prices: the `full` recipe's epochs, in batches of 32 over the training split.
FINETUNE_STRATEGY = "full"
FINETUNE_BATCH = 32
# The step is timed on 16 items after an untimed warm-up of 8 (the first steps pay one-time allocations:
# a first step of 32 took twice a steady one), then scaled to 32. Timing 32 items cost more than the whole
# ranking (up to 17 s per backbone on one core); per item, 8 ran 1.7x faster than 32 (CPU cache) and 16
# close to what the `full` recipe's steps really cost (benchmarks/verdicts.py prints both).
WARMUP_BATCH = 8
TIMED_BATCH = 16


def finetune_epochs(strategy: str = FINETUNE_STRATEGY) -> int:
    """Epochs the recipe runs when nothing stops it early (what the estimate prices)."""
    from headstart.recipes import get_recipe

    return sum(p.epochs for p in get_recipe(strategy, n_groups=1).phases)


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


def train_step_seconds(backbone: Any, batch_sizes: list[int], device: str = "auto") -> list[float]:
    """Wall time of training steps as the `full` recipe runs them (forward, backward through every layer,
    SGD update; BatchNorm statistics frozen, as pretrained recipes keep them) of a copy of `backbone` plus
    a linear head, one step per batch size, on random input at its input size (decoding not included), on
    `device` (each step waits for the device to finish)."""
    import copy

    import torch

    from headstart.train.engine import place, resolve_device, synchronize
    from headstart.train.groups import set_trainable
    from headstart.train.precision import side_effect_free, timed_input

    dev = resolve_device(device)
    try:
        model, saved = copy.deepcopy(backbone), None
    except TypeError:  # a family holding what cannot be copied (a tokenizer's lock): step it, then restore
        model = backbone
        saved = (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            [(q, q.requires_grad) for q in model.parameters()],
            next(model.parameters()).device,
        )
    head = torch.nn.Linear(backbone.embed_dim, 10).to(dev)
    # Images train channels-last, as the Trainer lays them out (classify.Classification): on a 2-core
    # Zen 4 this Lite0 step of 32 took 3.0 s contiguous, 1.6 s channels-last (the Trainer's real steps:
    # 1.6-1.7 s), so a contiguous timing priced epochs at ~1.9x their cost and plans starved fine-tunes.
    layout = torch.channels_last if backbone.modality == "image" and model is not backbone else None
    times = []
    with side_effect_free([model]):
        model.to(dev)
        if layout is not None:
            model.to(memory_format=layout)
        set_trainable(model, head, len(model.groups), freeze_batchnorm=True)
        opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=1e-3, momentum=0.9)
        micro = _micro_batch(model, head, backbone, dev)
        for n in batch_sizes:
            # As the Trainer runs it: on a CPU in micro-batches within the activation budget, one update.
            m = min(n, micro)
            x, t = place(timed_input(backbone, m), dev), torch.randint(0, 10, (m,)).to(dev)
            if layout is not None:
                x = x.contiguous(memory_format=layout)
            chunks = [m] * (n // m) + ([n % m] if n % m else [])
            synchronize(dev)
            t0 = time.perf_counter()
            opt.zero_grad()
            for c in chunks:
                torch.nn.functional.cross_entropy(head(model(x[:c] if c < m else x)), t[:c]).backward()
            opt.step()
            synchronize(dev)
            times.append(time.perf_counter() - t0)
    if saved is not None:
        state, flags, where = saved
        model.load_state_dict(state)
        for q, flag in flags:
            q.requires_grad_(flag)
        model.to(where)
    return times


def _micro_batch(model: Any, head: Any, backbone: Any, dev: Any) -> int:
    """Items per micro-batch of a `full` step here (train.micro_batch; whole batches off the CPU)."""
    if dev.type != "cpu":
        return 1 << 30
    from headstart.train.engine import place
    from headstart.train.micro_batch import micro_batch_size, saved_bytes
    from headstart.train.precision import timed_input

    x = place(timed_input(backbone, 2), dev)
    per_item = saved_bytes(lambda: head(model(x)), [*model.parameters(), *head.parameters()]) / 2
    return micro_batch_size(per_item, 1 << 30)


def finetune_step_seconds(
    backbone: Any,
    batch_size: int = FINETUNE_BATCH,
    timed_batch: int = TIMED_BATCH,
    *,
    cache: bool = True,
    device: str = "auto",
) -> float:
    """Estimated wall time of one `full`-recipe training step of `batch_size` items on `device` (see
    train_step_seconds): one step of `timed_batch` items after an untimed warm-up step, scaled.

    Remembered per backbone, machine, thread count and (off the CPU) device in the headstart cache, so
    ranking other data with the same backbone does not time it again."""
    import os
    import platform

    import torch

    from headstart.fileio import atomic_write_json
    from headstart.train.engine import resolve_device

    dev = resolve_device(device)
    machine = (platform.machine(), os.cpu_count(), torch.get_num_threads())
    # "cl": timed as the Trainer lays images out (channels-last); older memos timed contiguous tensors.
    key = "|".join(map(str, (backbone.key, *machine, timed_batch, "cl")))
    if dev.type == "cuda":  # a GPU's step is its own figure (the CPU's keys are as before)
        key += f"|{dev}|{torch.cuda.get_device_name(dev)}"
    elif dev.type != "cpu":
        key += f"|{dev}"
    memo = _step_memo() if cache else {}
    if key in memo:
        return float(memo[key]) * batch_size / timed_batch
    # The first step is the warm-up: one-time allocations and kernel choices.
    # The faster of two timed steps: the memo outlives this run, so one step slowed by other work on the
    # machine would shorten every later plan.
    seconds = min(train_step_seconds(backbone, [WARMUP_BATCH, timed_batch, timed_batch], device=str(dev))[1:])
    if cache:
        atomic_write_json(_step_memo_path(), {**_step_memo(), key: seconds})
    return seconds * batch_size / timed_batch


def _step_memo_path() -> Path:
    from headstart.fileio import cache_dir

    return cache_dir() / "step_times.json"


def _step_memo() -> dict[str, float]:
    from headstart.fileio import read_json_memo

    return read_json_memo(_step_memo_path())


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
    device: str = "auto",
) -> list[dict[str, Any]]:
    """One row per backbone, best LogME first. See the module docstring for what each score means.
    `device`: where the backbones embed and the fine-tuning step is timed (the row's `device`).

    Row keys: backbone, logme, knn_accuracy, probe_cv_accuracy (each with a 95 % Wilson interval, `_ci`,
    on the n items; probe_cv_tied_with_best: its interval reaches the best one's), probe_C, n, dim,
    embed_s, forwards, score_s, estimate_s, rank_s (= embed_s + score_s + estimate_s: all the ranking's
    own work), finetune_step_s, finetune_steps, finetune_estimate_s.
    """
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed, forward_device
    from headstart.intervals import wilson
    from headstart.verdicts.logme import logme

    if not backbones:
        raise HeadstartError("no backbones to rank", fix="name at least one, e.g. --backbones a,b")
    forward_device(backend, device)  # an absent device is refused before the data is read
    ds = load_dataset(data, seed=seed)
    labeled = [it for it in ds.items if it.split in ("train", "val")]
    n_train = len(ds.split("train"))
    index = {c: i for i, c in enumerate(ds.classes)}
    epochs = finetune_epochs()
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
            device=device,
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
        t0 = time.perf_counter()
        step_s = finetune_step_seconds(bb, device=device) if estimate_finetune else None
        estimate_s = time.perf_counter() - t0
        steps = math.ceil(n_train / FINETUNE_BATCH) * epochs
        rows.append(
            {
                "backbone": bb.name,
                "logme": score,
                "knn_accuracy": knn,
                "knn_accuracy_ci": list(wilson(round(knn * len(y)), len(y))),
                "probe_cv_accuracy": probe_acc,
                "probe_cv_accuracy_ci": list(wilson(round(probe_acc * len(y)), len(y))),
                "probe_C": C,
                "n": len(y),
                "dim": int(feats.X.shape[1]),
                "embed_s": embed_s,
                "forwards": int(feats.stats["forwards"]),
                "device": feats.stats["device"],
                "score_s": score_s,
                "estimate_s": estimate_s,
                "rank_s": embed_s + score_s + estimate_s,
                "finetune_step_s": step_s,
                "finetune_steps": steps,
                "finetune_estimate_s": None if step_s is None else step_s * steps,
                "skipped": feats.bad,
            }
        )
    rows.sort(key=lambda r: -r["logme"])
    # Within the noise of the top probe score: the intervals overlap, so the data cannot order them.
    top = max(rows, key=lambda r: r["probe_cv_accuracy"])
    for r in rows:
        r["probe_cv_tied_with_best"] = (
            r is top or r["probe_cv_accuracy_ci"][1] >= top["probe_cv_accuracy_ci"][0]
        )
    return rows


def ranking_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Total time of the ranking against the estimated cost of fine-tuning every backbone."""
    rank_s = float(sum(r["rank_s"] for r in rows))
    est = [r["finetune_estimate_s"] for r in rows]
    finetune_s = float(sum(est)) if est and all(e is not None for e in est) else None
    return {
        "rank_s": rank_s,
        "finetune_estimate_s": finetune_s,
        "estimated_speedup": None if finetune_s is None or rank_s <= 0 else finetune_s / rank_s,
        "estimate": f"one measured training step x ceil(n_train / {FINETUNE_BATCH}) x {finetune_epochs()} "
        f"epochs (the `{FINETUNE_STRATEGY}` recipe) per backbone (decoding, evaluation and early stopping "
        "not included)",
    }
