"""Head-only runs on cached features: `probe`, and `fit` with a closed-form recipe (`head`).

The backbone stays frozen, so nothing is decoded and no Trainer runs: the embeddings come through the
feature cache and the head is the L2-regularised logistic regression of `headstart.head`, fitted by
`ProbeClassifier` with its strength chosen on val. Whichever verb made it, the run is of kind "probe":
head.safetensors, the recipe in run.json, no delta. `fit --resume` of such a run fits the head again
(deterministic, and faster than reading a checkpoint back); its checkpoint only marks the run as started.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.data import SPLITS
from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.config import ProbeConfig
    from headstart.data import Item
    from headstart.estimator import ProbeClassifier
    from headstart.features import Features
    from headstart.train.job import FitJob, FitReport


@dataclass
class _Embedded:
    """The usable items of each split and their cached embeddings."""

    feats: Features
    row: dict[str, int]  # source -> row of feats.X
    by_split: dict[str, list[Item]]
    index: dict[str, int]  # class name -> class index
    forward: dict[str, Any]  # the frozen forward's precision and why (run.json's `frozen_forward`)
    views: np.ndarray | None = (
        None  # (n_train, K, D): augmented views of the training items (headstart.views)
    )
    views_stats: dict[str, Any] | None = None

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        items = self.by_split[split]
        rows = np.array([self.row[it.source] for it in items], dtype=np.int64)
        return self.feats.X[rows], np.array([self.index[it.label] for it in items], dtype=np.int64)


def fit_frozen(job: FitJob, opts: ProbeConfig) -> FitReport:
    """Embed (cached), fit the head, evaluate, save: the path of `probe` and `fit --strategy head`."""
    from headstart.views import check_views

    check_views(job.recipe.views, job.bb.modality, job.cfg.data, opts.precision)  # before any embedding
    emb = _embed(job, opts)
    if job.recipe.views:
        _embed_views(job, opts, emb)
    clf = _fit_head(job, opts, emb)
    metrics, history = _evaluate(job, opts, clf, emb)
    saved = _save(job, clf, metrics, emb)
    return job.report(saved, job.recipe, metrics, history, warnings=[])


def _embed(job: FitJob, opts: ProbeConfig) -> _Embedded:
    """Every item through the feature cache; unreadable ones leave the data (listed in its summary)."""
    from headstart.data.images import DEFAULT_MAX_PIXELS
    from headstart.features import embed_options
    from headstart.frozen_precision import frozen_features

    max_pixels = opts.max_pixels or DEFAULT_MAX_PIXELS
    options = embed_options(opts, max_pixels=max_pixels)
    feats, forward = frozen_features(job.bb, job.ds, opts.precision, C=opts.C, seed=opts.seed, **options)
    job.timings["hash_and_cache_s"] = feats.stats["hash_s"]
    job.timings["embed_s"] = feats.stats["embed_s"]
    job.ds = ds = job.ds.drop(feats.bad)
    row = {p: i for i, p in enumerate(feats.paths)}
    job.item_hashes = {p: feats.hashes[i] for p, i in row.items()}
    by_split = {s: [it for it in ds.split(s) if it.source in row] for s in SPLITS}
    absent = set(ds.classes) - {it.label for it in by_split["train"]}
    if absent:
        raise HeadstartError(
            f"after skipping {len(feats.bad)} unreadable file(s), the training split of {job.cfg.data} has "
            f"no examples of {sorted(absent)}",
            fix="fix or replace the skipped files (listed in the output), or remove those classes",
        )
    return _Embedded(feats, row, by_split, {c: i for i, c in enumerate(ds.classes)}, forward)


def _embed_views(job: FitJob, opts: ProbeConfig, emb: _Embedded) -> None:
    """The recipe's augmented views of the training items (never val or test), through their own cache."""
    from headstart.features import embed_options
    from headstart.views import embed_views

    train = emb.by_split["train"]
    hashes = [emb.feats.hashes[emb.row[it.source]] for it in train]
    options = embed_options(opts, max_pixels=opts.max_pixels)
    emb.views, emb.views_stats = embed_views(
        job.bb, [it.source for it in train], hashes, job.recipe.views, seed=opts.seed, **options
    )
    job.timings["views_embed_s"] = emb.views_stats["embed_s"]


def _fit_head(job: FitJob, opts: ProbeConfig, emb: _Embedded) -> ProbeClassifier:
    """The probe on the training embeddings, its L2 strength chosen on val (or by CV without one)."""
    from headstart.estimator import ProbeClassifier
    from headstart.train.checkpoint import load_checkpoint, save_checkpoint
    from headstart.train.engine import is_main_process

    work_dir = job.open_work_dir()  # fit only: started.json, so --resume can refuse other options
    if work_dir is not None and job.cfg.resume:
        state = load_checkpoint(work_dir)
        if state is not None and state.get("recipe") != job.recipe.to_dict():
            raise HeadstartError(
                f"the checkpoint in {work_dir} was written by another recipe",
                fix="resume with the same strategy and options, or drop --resume",
            )
    # Fitted on the embeddings _embed cached, it embeds nothing itself: no embedding options to pass.
    clf = ProbeClassifier(job.cfg.backbone, C=opts.C, seed=opts.seed, imbalance=opts.imbalance)
    clf.backbone_ = job.bb
    classes = np.asarray(job.ds.classes)
    (E_tr, t_tr), (E_va, t_va) = emb.arrays("train"), emb.arrays("val")
    if emb.views is not None:  # the originals, then their views; val stays originals (C is chosen there)
        from headstart.views import with_views

        E_tr, t_tr = with_views(E_tr, t_tr, emb.views)
    has_val = len(t_va) > 0
    clf.fit(E_tr, classes[t_tr], X_val=E_va if has_val else None, y_val=classes[t_va] if has_val else None)
    job.timings["fit_head_s"] = clf.fit_seconds_
    if work_dir is not None and is_main_process():  # marks the run as started, as the Trainer's does
        save_checkpoint(work_dir, {"recipe": job.recipe.to_dict(), "C": clf.C_})
    return clf


def _split_metrics(
    clf: ProbeClassifier, emb: _Embedded, split: str, k: int
) -> tuple[dict[str, Any], float, float]:
    """(metrics, loss, accuracy) of the head on one split; val and test add each prediction and kNN."""
    from headstart.intervals import wilson
    from headstart.metrics import classification_metrics, knn_predict, likelihood_evidence

    E, t = emb.arrays(split)
    z = clf.head_.logits(E)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(len(t)), t].mean())
    held_out = split != "train"
    m = classification_metrics(t, z.argmax(axis=1), clf.classes_.tolist(), predictions=held_out)
    m["loss"] = loss
    if split == "val":  # compare's paired likelihood test (headstart.verdicts.select)
        m.update(likelihood_evidence(z, t))
    if held_out:
        knn = knn_predict(clf.train_embeddings_, clf.train_targets_, E, len(clf.classes_), k=k)
        m["knn_accuracy"] = float((knn == t).mean())
        m["knn_accuracy_ci"] = list(wilson(int((knn == t).sum()), len(t)))
    return m, loss, float(m["accuracy"])


def _evaluate(
    job: FitJob, opts: ProbeConfig, clf: ProbeClassifier, emb: _Embedded
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics per split, and the one-row history (the head's starting point is its end)."""
    from headstart.train.objective import Objective

    t0 = time.perf_counter()
    metrics: dict[str, Any] = {
        "C": clf.C_,
        "val_selection": clf.selection_scores_,
        "imbalance": clf.imbalance_.to_dict(),  # what the training counts said and what was done
    }
    scores = {s: (float("nan"), float("nan")) for s in SPLITS}
    for s in SPLITS:
        if emb.by_split[s]:
            metrics[s], *score = _split_metrics(clf, emb, s, opts.knn_k)
            scores[s] = (score[0], score[1])
    job.timings["evaluate_s"] = time.perf_counter() - t0
    stats = emb.feats.stats
    metrics.update(
        {
            "strategy": job.recipe.name,
            "best_epoch": 0,
            "trainable_params": clf.head_.num_params,
            "backbone_params": job.bb.card.num_params,
            "train_s": clf.fit_seconds_,
            "unlabeled": 0,
            "objective": Objective().describe(),
            "warnings": [],
            "embed": {k: stats[k] for k in ("n_files", "cache_hits", "forwards", "backend", "device")},
            "frozen_forward": emb.forward,
            "timings": job.timings,
        }
    )
    if emb.views_stats is not None:
        metrics["views"] = {**emb.views_stats, "train_rows": len(clf.train_targets_)}
    (tl, ta), (vl, va) = scores["train"], scores["val"]
    phase = next(p for p in job.recipe.phases if p.head_init == "probe")
    history = [
        {
            "epoch": 0,
            "phase": phase.name,
            "phase_epoch": 0,
            "kind": "init",
            "train_loss": tl,
            "train_acc": ta,
            "val_loss": vl,
            "val_acc": va,
            "lr": None,
            "seconds": clf.fit_seconds_,
        }
    ]
    return metrics, history


def _save(job: FitJob, clf: ProbeClassifier, metrics: dict[str, Any], emb: _Embedded) -> Any:
    """The run folder (kind "probe"), in one rename; fit's work folder goes once the run is in."""
    from headstart.fileio import atomic_write_json
    from headstart.runs import HEAD_FILE, METRICS_FILE, data_root_of, make_split_rows, to_jsonable
    from headstart.train.engine import is_main_process
    from headstart.train.job import work_dir_of

    if not job.cfg.save or not is_main_process():
        return None
    root = data_root_of(job.ds.root)  # split.csv's paths are relative to it
    split_rows = make_split_rows([it for s in SPLITS for it in emb.by_split[s]], job.item_hashes, root)
    info = {
        "strategy": job.recipe.name,
        "recipe": job.recipe.to_dict(),
        "objective": metrics["objective"],
        "data_root": str(root),
        "frozen_forward": emb.forward,  # what predict, evaluate and serve must embed with
    }
    saved = clf.save(
        job.run_dir,
        metrics=to_jsonable(metrics),
        info=info,
        data=to_jsonable(job.ds.summary()),
        split_rows=split_rows,
        overwrite=job.cfg.overwrite,
    )
    metrics["stored_bytes"] = (saved / HEAD_FILE).stat().st_size
    atomic_write_json(saved / METRICS_FILE, to_jsonable(metrics))
    if job.verb == "fit":  # probe keeps no work folder (one beside its --out is an interrupted fit's)
        shutil.rmtree(work_dir_of(job.run_dir), ignore_errors=True)
    return saved
