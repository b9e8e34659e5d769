"""The last steps of a trained fit: `trained_delta` (what the run stores beside the head), `evaluate_trained`
(metrics per split), and `save_trained` (the run folder: head + delta or adapter, history, recipe, in one
rename; run.json from `run_info`)."""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headstart.train.job import FitJob, work_dir_of

if TYPE_CHECKING:
    from headstart.runs import RunInfo
    from headstart.train.data import Split
    from headstart.train.loop import Trainer


def delta_state(backbone: Any, groups: set[int], *, whole: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of the trained groups only (all of them for a from-scratch model)."""
    prefixes = tuple(f"groups.{i}." for i in sorted(groups)) + (("pool.",) if groups else ())
    return {
        k: v.detach().clone() for k, v in backbone.state_dict().items() if whole or k.startswith(prefixes)
    }


def history_csv(
    history: list[dict[str, Any]],
    scores: tuple[str, ...] = ("train_loss", "train_acc", "val_loss", "val_acc"),
) -> str:
    """The per-epoch curves as CSV; `scores`: the task's columns (another shape's: its own scores)."""
    buf = io.StringIO()
    cols = ["epoch", "phase", "phase_epoch", "kind", *scores, "lr", "seconds"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def trained_delta(job: FitJob, trainer: Trainer) -> dict[str, torch.Tensor]:
    """What the run stores beside the head: the adapter, or the trained groups (all, from scratch)."""
    if job.adapter is not None:
        from headstart.adapters import adapter_state

        return adapter_state(job.bb)  # the base weights never moved: only the adapter is stored
    whole = not trainer.recipe.pretrained
    groups = trainer.trained_groups
    return delta_state(job.bb, groups, whole=whole) if (groups or whole) else {}


def evaluate_trained(
    job: FitJob, trainer: Trainer, splits: dict[str, Split], delta: dict[str, torch.Tensor], *, n_extra: int
) -> dict[str, Any]:
    """Metrics per split of the trained model, and what it trained and stores."""
    from headstart.metrics import classification_metrics, likelihood_evidence

    classes = job.ds.classes
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    for s in ("train", "val", "test"):
        if len(splits[s]):
            z, y = trainer.labeled_logits(s, splits[s], k=len(job.bb.groups))
            m = classification_metrics(y.numpy(), z.argmax(1).numpy(), classes, predictions=s != "train")
            m["loss"] = float(torch.nn.functional.cross_entropy(z, y))
            if s == "val":  # compare's paired likelihood test (headstart.verdicts.select)
                m.update(likelihood_evidence(z.detach().float().numpy(), y.numpy()))
            metrics[s] = m
    job.timings["evaluate_s"] = time.perf_counter() - t0
    return {**metrics, **trained_facts(job, trainer, delta, n_extra=n_extra)}


def trained_facts(
    job: FitJob, trainer: Trainer, delta: dict[str, torch.Tensor], *, n_extra: int
) -> dict[str, Any]:
    """What any trained run records beside its scores: what trained and stores, how, how long."""
    bb = job.bb
    head_params = trainer.head.weight.numel() + trainer.head.bias.numel()
    metrics: dict[str, Any] = {
        "strategy": trainer.recipe.name,
        "best_epoch": trainer.best["epoch"],
        "soup": trainer.best.get("soup"),  # the epochs averaged (headstart.train.averaging), or None
        "trainable_params": int(head_params + sum(v.numel() for k, v in delta.items() if "running" not in k)),
        "backbone_params": bb.card.num_params,
        "train_s": trainer.train_seconds,
        # transfer-set items in the training split + what the objective brought (DANN's target inputs)
        "unlabeled": n_extra + trainer.objective.n_extra_unlabeled,
        "objective": trainer.objective.describe(),
        # what the training counts said and what was done (None: a Trainer made without it)
        "imbalance": trainer.imbalance.to_dict() if trainer.imbalance is not None else None,
        "warnings": trainer.warnings,
        "timings": job.timings,
    }
    if job.adapter is not None:  # what full fine-tuning would train and store, for comparison
        base = {k: v for k, v in bb.state_dict().items() if ".lora_" not in k}
        metrics["adapter"] = job.adapter
        metrics["full_trainable_params"] = int(bb.card.num_params + head_params)
        full = sum(v.numel() * v.element_size() for v in base.values()) + 4 * head_params
        metrics["full_bytes"] = int(full)
    return metrics


def run_info(job: FitJob, trainer: Trainer, metrics: dict[str, Any]) -> RunInfo:
    """run.json of a trained run (kind "fit"): the base by reference, what trained, how, on what data."""
    from headstart.runs import BackboneRef, ObjectiveInfo, RunInfo, data_root_of, library_versions

    bb, recipe, cfg = job.bb, trainer.recipe, job.cfg
    whole = not recipe.pretrained
    return RunInfo(
        kind="fit",
        strategy=recipe.name,
        pretrained=recipe.pretrained,
        backbone=BackboneRef(
            name=bb.name,
            key=job.base_key,
            weights_sha256=bb.card.weights_sha256 if recipe.pretrained else None,
            card=bb.card.to_dict(),
        ),
        preprocess=bb.preprocess.to_dict(),
        modality=bb.modality,
        classes=list(job.ds.classes),
        params={
            "seed": cfg.seed,
            "batch_size": recipe.batch_size,
            "augment": cfg.augment,
            "prefix_cache": cfg.prefix_cache,
            "bf16": cfg.bf16,
        },
        recipe=recipe.to_dict(),
        engine=trainer.engine.describe(),  # device, precision (and why), world size
        trained_groups=list(bb.group_names)
        if whole
        else [bb.group_names[i] for i in sorted(trainer.trained_groups)],
        trainable_params=metrics["trainable_params"],
        objective=ObjectiveInfo.from_dict(metrics["objective"]),
        data_root=str(data_root_of(job.ds.root)),
        versions=library_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def save_trained(
    job: FitJob, trainer: Trainer, metrics: dict[str, Any], delta: dict[str, torch.Tensor]
) -> Path | None:
    """Write the run (head + delta or adapter, history, recipe) in one rename; the work folder goes once
    it is in."""
    from headstart.fileio import atomic_write_json
    from headstart.model import head_from_linear
    from headstart.runs import (
        ADAPTER_FILE,
        DELTA_FILE,
        HEAD_FILE,
        HISTORY_CSV_FILE,
        HISTORY_FILE,
        METRICS_FILE,
        RECIPE_FILE,
        AdapterRef,
        DeltaRef,
        make_split_rows,
        to_jsonable,
        write_run,
    )
    from headstart.train.engine import is_main_process

    if not job.cfg.save or not is_main_process():
        return None
    info = run_info(job, trainer, metrics)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    if job.adapter is not None:
        info.adapter = AdapterRef(ADAPTER_FILE, dict(job.adapter))
        tensors[ADAPTER_FILE] = delta
    elif delta:
        info.delta = DeltaRef(DELTA_FILE, whole=not trainer.recipe.pretrained)
        tensors[DELTA_FILE] = delta
    ds = job.ds
    items = [it for s in ("train", "val", "test") for it in ds.split(s)]
    history = {"epochs": trainer.history, "best_epoch": trainer.best["epoch"], "warnings": trainer.warnings}
    saved = write_run(
        job.run_dir,
        run=info,
        head=head_from_linear(trainer.head),
        metrics=to_jsonable(metrics),
        data=to_jsonable(ds.summary()),
        split_rows=make_split_rows(items, job.item_hashes, info.data_root),
        tensors=tensors,
        json_files={HISTORY_FILE: to_jsonable(history), RECIPE_FILE: trainer.recipe.to_dict()},
        text_files={HISTORY_CSV_FILE: history_csv(trainer.history)},
        overwrite=job.cfg.overwrite,
    )
    metrics["stored_bytes"] = sum((saved / f).stat().st_size for f in [HEAD_FILE, *tensors])
    atomic_write_json(saved / METRICS_FILE, to_jsonable(metrics))
    shutil.rmtree(work_dir_of(job.run_dir), ignore_errors=True)
    return saved
