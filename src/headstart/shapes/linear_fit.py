"""`fit` of a LinearShape (multi-label, regression) with a strategy that trains the backbone.

    headstart fit DATA --task multilabel --strategy lora         # BCE per label; thresholds re-tuned on val
    headstart fit DATA --task regress --strategy full --loss mse  # Huber by default

The pipeline is classification's (headstart.train.api: check the output folder, load, build, decode, the
one Trainer, the delta), with the shape's targets and the task of headstart.train.targets_task: LP-FT
starts from the shape's own probe (`fit_head` on the pristine embeddings). After training, the read-out
(thresholds per label, the conformal half-width) is tuned again on val, on the fine-tuned model's outputs
(`LinearShape.readout`): the probe's would be stale. The run is the probe's folder (`save_run`) with
kind "fit", the recipe, the history and the delta or adapter, so the shape's evaluate, predict, export
and serve read it as they read a probe. `head` (nothing trains) is the shape's probe.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.data import SPLITS
from headstart.errors import HeadstartError
from headstart.shapes.linear_io import EmbeddedSplits

if TYPE_CHECKING:
    from pathlib import Path

    from headstart.config import FitConfig
    from headstart.head import LinearHead
    from headstart.recipes import Recipe
    from headstart.shapes import ShapeReport
    from headstart.shapes.linear import LinearShape
    from headstart.train.data import Split
    from headstart.train.job import FitJob
    from headstart.train.loop import Trainer


def _refuse(shape: LinearShape, cfg: FitConfig, recipe: Recipe) -> None:
    """What this pipeline does not run, refused before any data is read."""
    task = f"--task {shape.name}"
    if recipe.objective != "cross-entropy" or recipe.pooled != "last" or recipe.views:
        raise HeadstartError(
            f"{task} does not run strategy {recipe.name!r} (its own loss or features)",
            fix="use head, lp-ft, partial:N, full or lora",
        )
    if recipe.label_regularisers():
        raise HeadstartError(
            f"{task} has no class labels for {' and '.join(recipe.label_regularisers())} to regularise",
            fix="remove them from the recipe",
        )
    if cfg.unlabeled is not None or cfg.target_unlabeled is not None:
        raise HeadstartError(f"{task} learns from labeled items only", fix="drop --target-unlabeled")
    if cfg.lr == "auto":
        raise HeadstartError(
            f"--lr auto is a range test of a softmax head: {task} has none", fix="give --lr a number"
        )
    if not recipe.pretrained or not any(p.head_init == "probe" for p in recipe.phases):
        raise HeadstartError(
            f"strategy {recipe.name!r} starts from no probe; {task} fine-tunes from the shape's probe "
            "(its head and read-out)",
            fix="use lp-ft, partial:N, full or lora (or a recipe with head_init: probe)",
        )


def fit_linear(shape: LinearShape, cfg: FitConfig) -> ShapeReport:
    """Fine-tune the backbone (recipe `cfg.strategy`) toward the shape's targets and save the run."""
    from headstart.config import ProbeConfig
    from headstart.recipes import get_recipe
    from headstart.train.api import _build, _decode, _load, closed_form, lora_strategy
    from headstart.train.job import FitJob
    from headstart.train.resume import check_out, request_of
    from headstart.train.targets_task import LOSSES

    strategy = lora_strategy(cfg)
    recipe = get_recipe(strategy, 10_000)  # the group count only bounds partial:N
    if closed_form(recipe) and recipe.pooled == "last" and not recipe.views:
        return shape.probe(ProbeConfig(**cfg.shared()))
    _refuse(shape, cfg, recipe)
    if cfg.augment is None and not shape.outputs_are_labels:
        # A number read from a picture (a count, a size, a colour) can change under a crop or colour
        # jitter: augmentation is opt-in (--augment), not the default it is for labels.
        cfg = replace(cfg, augment=False)
    loss = cfg.loss or LOSSES[0]
    # What a --resume must match beyond classification's: the task, and a number's loss.
    request = {**request_of(cfg, strategy), "task": shape.name}
    if not shape.outputs_are_labels:
        request["loss"] = loss
    started = None
    if cfg.save:  # the output folder is checked before any data is read or model loaded
        started = check_out(
            cfg.out,
            resume=cfg.resume,
            overwrite=cfg.overwrite,
            request=request,
            engine=(cfg.device, cfg.precision),
        )
    timings: dict[str, float] = {}
    ds = _load(cfg, request, started, timings)
    if ds.modality not in shape.modalities:
        raise HeadstartError(
            f"{cfg.data} holds {ds.modality} data; --task {shape.name} reads {', '.join(shape.modalities)}",
            fix="give data of those, or another --task",
        )
    job = FitJob(cfg, "fit", request, started, timings, *_build(cfg, strategy, ds, timings))
    splits, _ = _decode(job, targets=shape.targets)
    # The targets in their own units, in float64 (the Splits hold float32 copies, standardised below).
    raw = {s: np.asarray(shape.targets(job.ds, job.ds.split(s)), np.float64) for s in SPLITS}
    scaling = _standardise(shape, job, raw, splits)
    trainer = _train(shape, job, splits, raw, loss, scaling)
    return _finish(shape, job, trainer, splits, raw, scaling)


def _standardise(
    shape: LinearShape, job: FitJob, raw: dict[str, np.ndarray], splits: dict[str, Split]
) -> tuple[float, float]:
    """Regression trains on (y - mean) / sd of train's targets (returned); every multi-label output needs a
    positive training item (else it has nothing to learn from)."""
    y = raw["train"]
    if y.ndim == 2:
        names = shape.output_names(job.ds)
        empty = [names[k] for k in np.flatnonzero(~y.astype(bool).any(axis=0))]
        if empty:
            raise HeadstartError(
                f"the training split of {job.cfg.data} has no item labeled {empty[:5]}"
                + (" (after skipping unreadable files)" if job.ds.skipped else ""),
                fix="add training items with those labels, or remove those labels",
            )
        return 0.0, 1.0
    import torch

    mean, sd = float(y.mean()), float(y.std())
    if not sd > 0:
        raise HeadstartError(
            f"every training target of {job.cfg.data} is {mean:g}: there is nothing to fine-tune toward",
            fix="give items with varied targets (or --strategy head, which predicts the constant)",
        )
    for s in SPLITS:
        splits[s].y = torch.from_numpy(((raw[s] - mean) / sd).astype(np.float32))
    return mean, sd


def _train(
    shape: LinearShape,
    job: FitJob,
    splits: dict[str, Split],
    raw: dict[str, np.ndarray],
    loss: str,
    scaling: tuple[float, float],
) -> Trainer:
    """The one Trainer with a TargetsTask whose head starts as the shape's probe on pristine embeddings."""
    from headstart.train.api import _train as train
    from headstart.train.targets_task import MULTILABEL, REGRESS, TargetsTask

    cfg, (mean, scale) = job.cfg, scaling
    regress = raw["train"].ndim == 1

    def probe_init(E: np.ndarray, Ev: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        head, state = shape.fit_head(E, raw["train"], Ev, raw["val"], seed=cfg.seed, C=None)
        state = {"outputs": shape.output_names(job.ds), **state}  # as the probe's (LinearShape.probe)
        probe_val = (
            shape.split_metrics(head.logits(Ev), raw["val"], state, seed=cfg.seed) if len(Ev) else None
        )
        w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
        if regress:  # the head outputs the value: in the standardised units the task trains in
            w, b = w / scale, (b - mean) / scale
        return w, b, {"readout": state, "probe_val": probe_val}

    kind, n_out = (REGRESS, 1) if regress else (MULTILABEL, raw["train"].shape[1])
    task = partial(TargetsTask, kind=kind, probe_init=probe_init, loss=loss, scale=scale)
    return train(job, splits, None, task=(task, n_out))


def _finish(
    shape: LinearShape,
    job: FitJob,
    trainer: Trainer,
    splits: dict[str, Split],
    raw: dict[str, np.ndarray],
    scaling: tuple[float, float],
) -> ShapeReport:
    """The fine-tuned outputs of every split (in target units), the read-out re-tuned on val's, the
    shape's scores, the run saved."""
    from headstart.model import head_from_linear
    from headstart.shapes import ShapeReport
    from headstart.train.save import trained_delta, trained_facts

    cfg, bb, (mean, scale) = job.cfg, job.bb, scaling
    delta = trained_delta(job, trainer)
    t0 = time.perf_counter()
    n = len(bb.groups)
    Z = {s: trainer.logits(s, splits[s], k=n).numpy().astype(np.float64) * scale + mean for s in SPLITS}
    start = trainer.task.readout_state  # the probe's (kept through a resume's checkpoint)
    state = start["readout"]
    if len(Z["val"]):
        state = shape.readout(Z["val"], raw["val"], state)
    metrics: dict[str, Any] = {
        s: shape.split_metrics(Z[s], raw[s], state, seed=cfg.seed) for s in SPLITS if len(Z[s])
    }
    job.timings["evaluate_s"] = time.perf_counter() - t0
    metrics |= trained_facts(job, trainer, delta, n_extra=0)
    metrics |= {"task": shape.name, "readout": state, "probe_val": start.get("probe_val")}
    head = head_from_linear(trainer.head)  # in the units the task trained in: the value's, for the run
    head.weight = (head.weight * scale).astype(np.float32)
    head.bias = (head.bias * scale + mean).astype(np.float32)
    run_dir = _save(shape, job, trainer, metrics, delta, head, state) if cfg.save else None
    warnings = [*job.ds.summary().get("warnings", []), *trainer.warnings]  # type: ignore[misc]
    return ShapeReport(
        task=shape.name,
        strategy=trainer.recipe.name,
        backbone=bb.name,
        metrics=metrics,
        run_dir=None if run_dir is None else str(run_dir),
        data=job.ds.summary(),
        table=shape.metric_table(metrics),
        lines=[
            *shape.notes(job.ds, job.ds.split("train"), state),
            _from_probe(trainer),
            *_augment_note(shape, job),
        ],
        warnings=warnings,
        timings=job.timings,
    )


def _from_probe(trainer: Trainer) -> str:
    """What fine-tuning did to the score that judged the epochs, from the probe it started at."""
    key = trainer.task.score_key
    name = {"val_map": "mAP", "val_rmse": "RMSE"}.get(key, key)
    start = next((r[key] for r in trainer.history if r["kind"] == "init"), None)
    best = next((r for r in trainer.history if r["epoch"] == trainer.best["epoch"]), None)
    if start is None or best is None:
        return f"best epoch {trainer.best['epoch']} on val {name}"
    return (
        f"val {name}, which picks the epoch: {start:.4g} for the probe fine-tuning started from, "
        f"{best[key]:.4g} at the best epoch ({best['epoch']}), kept (its read-out re-tuned on val)"
    )


def _augment_note(shape: LinearShape, job: FitJob) -> list[str]:
    if shape.outputs_are_labels or job.bb.modality != "image" or job.cfg.augment:
        return []
    return ["no augmentation: off unless --augment for a number (a crop or a colour jitter can change it)"]


def _save(
    shape: LinearShape,
    job: FitJob,
    trainer: Trainer,
    metrics: dict[str, Any],
    delta: dict[str, Any],
    head: LinearHead,
    state: dict[str, Any],
) -> Path | None:
    """The probe's run folder (LinearShape.save_run) with what a fit adds: kind, recipe, engine, history,
    the delta or adapter; the work folder of checkpoints goes once the run is in."""
    from headstart.runs import (
        ADAPTER_FILE,
        DELTA_FILE,
        HISTORY_CSV_FILE,
        HISTORY_FILE,
        RECIPE_FILE,
        AdapterRef,
        DeltaRef,
        to_jsonable,
    )
    from headstart.train.engine import is_main_process
    from headstart.train.job import work_dir_of
    from headstart.train.save import history_csv, run_info

    if not is_main_process():
        return None
    info = run_info(job, trainer, metrics).to_dict()
    keep = ("kind", "strategy", "pretrained", "backbone", "recipe", "params", "engine", "trained_groups")
    run: dict[str, Any] = {k: info[k] for k in (*keep, "trainable_params", "objective") if k in info}
    tensors: dict[str, dict[str, Any]] = {}
    if job.adapter is not None:
        run["adapter"], tensors[ADAPTER_FILE] = AdapterRef(ADAPTER_FILE, dict(job.adapter)).to_dict(), delta
    elif delta:
        run["delta"], tensors[DELTA_FILE] = DeltaRef(DELTA_FILE, whole=False).to_dict(), delta
    history = {"epochs": trainer.history, "best_epoch": trainer.best["epoch"], "warnings": trainer.warnings}
    emb = EmbeddedSplits(job.ds, {s: job.ds.split(s) for s in SPLITS}, {}, {}, job.item_hashes, None)
    saved = shape.save_run(
        job.cfg,
        job.bb,
        emb,
        head,
        state,
        metrics,
        run_dir=job.run_dir,
        kind="fit",
        info=run,
        tensors=tensors,
        json_files={HISTORY_FILE: to_jsonable(history), RECIPE_FILE: trainer.recipe.to_dict()},
        text_files={HISTORY_CSV_FILE: history_csv(trainer.history, trainer.task.score_columns)},
    )
    shutil.rmtree(work_dir_of(job.run_dir), ignore_errors=True)
    return saved
