"""`fit`: split the data, run a recipe with the Trainer, evaluate, and save a run that stores only the delta.

report = fit("examples/emoji/images", backbone="efficientnet_lite0", strategy="lp-ft")
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headstart.errors import HeadstartError
from headstart.recipes import Recipe, get_recipe

if TYPE_CHECKING:
    from headstart.train.loop import Objective

WORK_SUFFIX = ".training"  # checkpoints live beside the run folder until the run is written


# The trained groups' weights a run stores beside its head (the base backbone is only referenced).
DELTA_FILE = "delta.safetensors"
# In the work folder: what the run was started with (data, backbone, strategy, options), for --resume.
STARTED_FILE = "started.json"


def work_dir_of(run_dir: Path) -> Path:
    """Where a run's checkpoints live until it is written: `.NAME.training` beside the run folder."""
    return run_dir.parent / f".{run_dir.name}{WORK_SUFFIX}"


def _strategy_name(strategy: str | Recipe | dict[str, Any]) -> str | None:
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, dict):
        return strategy.get("name")
    return strategy.name


def _split_digest(items: Any) -> tuple[str, int]:
    """sha256 of the (source, label, split) rows: the same data gives the same split, so the same digest."""
    h = hashlib.sha256()
    for it in sorted((it.source, it.label, it.split or "") for it in items):
        h.update(json.dumps(it).encode("utf-8", errors="surrogatepass"))
    return h.hexdigest(), len(items)


def _item_hashes(bb: Any, sources: list[str]) -> dict[str, str]:
    out = {}
    for src in sources:
        try:
            out[src] = bb.item_hash(src)
        except OSError:  # gone since it was decoded: recorded without a hash (later checks skip it)
            out[src] = ""
    return out


def _refuse_changes(
    run_dir: Path, started: dict[str, Any], request: dict[str, Any], keys: tuple[str, ...]
) -> None:
    """--resume with other data, backbone, strategy or options than the interrupted run was started with."""
    diff = [k for k in keys if k in started and started[k] != request.get(k)]
    if not diff:
        return
    listed = "; ".join(f"{k}: the run has {started[k]!r}, this command {request.get(k)!r}" for k in diff)
    if set(diff) <= {"n_items", "split_sha256"}:
        listed = (
            f"the data at {request['data']} gives another split than the run was started on "
            f"({started.get('n_items')} items then, {request.get('n_items')} now)"
        )
    raise HeadstartError(
        f"cannot resume the interrupted run {run_dir}: {listed}",
        fix="resume with the options and data it was started with (see "
        f"{work_dir_of(run_dir) / STARTED_FILE}), or --overwrite to start over, or another --out",
    )


def check_out(
    out: str | Path | None, *, resume: bool, overwrite: bool, request: dict[str, Any]
) -> dict[str, Any] | None:
    """Refuse, before any work, what would lose a run or resume the wrong one; deletes nothing.

    Returns what the interrupted run was started with when it is resumed (None for a fresh start).
    """
    from headstart.fileio import ensure_writable_dir
    from headstart.runs import RUN_FILE
    from headstart.train.checkpoint import CHECKPOINT_FILE

    if out is None:
        if resume:
            raise HeadstartError(
                "--resume needs the --out folder of the interrupted run", fix="add --out RUN_FOLDER"
            )
        ensure_writable_dir("runs", flag="--out")  # where the default run folder goes
        return None
    run_dir = ensure_writable_dir(out, flag="--out")
    work_dir = work_dir_of(run_dir)
    finished = (run_dir / RUN_FILE).is_file()
    interrupted = (work_dir / CHECKPOINT_FILE).is_file() and not finished
    not_empty = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if finished:
            raise HeadstartError(
                f"{run_dir} holds a finished run: there is nothing to resume (nothing was changed)",
                fix="drop --resume and add --overwrite to replace it, or choose another --out",
            )
        if not interrupted:
            raise HeadstartError(
                f"no interrupted run to resume at {run_dir} (no checkpoint in {work_dir})",
                fix="drop --resume to start the run, or give the --out of the interrupted run",
            )
        if not_empty and not overwrite:
            raise HeadstartError(
                f"{run_dir} is not empty and is not a headstart run (resuming would write into it)",
                fix="choose another --out, or --overwrite",
            )
        started_file = work_dir / STARTED_FILE
        started: dict[str, Any] = {}
        if started_file.is_file():  # checkpoints of older versions have none: the recipe check remains
            try:
                started = json.loads(started_file.read_text())
            except (OSError, json.JSONDecodeError):
                started = {}
        keys = tuple(k for k in request if k not in ("n_items", "split_sha256"))
        _refuse_changes(run_dir, started, request, keys)
        return started
    if overwrite:
        return None
    if interrupted:
        raise HeadstartError(
            f"an interrupted run is there: {run_dir} (its checkpoint is in {work_dir}); nothing was changed",
            fix="add --resume to continue it or --overwrite to start over (or choose another --out)",
        )
    if finished:
        raise HeadstartError(
            f"{run_dir} already holds a finished run (nothing was changed)",
            fix="choose another --out, or --overwrite to replace it",
        )
    if not_empty:
        raise HeadstartError(
            f"{run_dir} already exists and is not empty", fix="choose another --out, or --overwrite"
        )
    return None


@dataclass
class FitReport:
    run_dir: Path | None
    backbone: str
    strategy: str
    classes: list[str]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    recipe: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "backbone": self.backbone,
            "strategy": self.strategy,
            "classes": self.classes,
            "metrics": self.metrics,
            "history": self.history,
            "recipe": self.recipe,
            "warnings": self.warnings,
            "data": self.data,
            "timings": self.timings,
        }


def delta_state(backbone: Any, groups: set[int], *, whole: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of the trained groups only (all of them for a from-scratch model)."""
    prefixes = tuple(f"groups.{i}." for i in sorted(groups)) + (("pool.",) if groups else ())
    return {
        k: v.detach().clone() for k, v in backbone.state_dict().items() if whole or k.startswith(prefixes)
    }


def history_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = [
        "epoch",
        "phase",
        "phase_epoch",
        "kind",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
    ]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def fit(
    data: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    strategy: str | Recipe | dict[str, Any] = "lp-ft",
    out: str | Path | None = None,
    seed: int = 0,
    val: float = 0.15,
    test: float = 0.15,
    epochs: int | None = None,
    lr: float | str | None = None,
    batch_size: int | None = None,
    augment: bool | None = None,
    prefix_cache: bool = True,
    bf16: bool = False,
    budget_s: float | None = None,
    resume: bool = False,
    strict: bool = False,
    overwrite: bool = False,
    save: bool = True,
    progress: bool = True,
    objective: Objective | None = None,
    unlabeled: str | Path | None = None,
    target_unlabeled: str | Path | None = None,
    domain_weight: float = 1.0,
) -> FitReport:
    """Train `strategy` on `data` and save the run (head + trained groups only, base referenced by hash).

    `objective` replaces the loss (distillation, domain-adversarial training); `unlabeled` inputs join the
    training split with label -1 (only an objective that uses them, like distillation, learns from them).
    `target_unlabeled`: inputs from the deployment domain for domain-adversarial training (DANN).
    """
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed
    from headstart.fileio import atomic_write_json
    from headstart.metrics import classification_metrics
    from headstart.runs import default_run_dir, library_versions, make_split_rows, to_jsonable, write_run
    from headstart.train.data import decode_all
    from headstart.train.loop import Split, Trainer, init_distributed

    # The output folder's state and writability are checked before any data is read or model loaded.
    request = {
        "data": str(Path(data).expanduser().resolve()),
        "backbone": backbone,
        "strategy": _strategy_name(strategy),
        "seed": seed,
        "val": val,
        "test": test,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "augment": augment,
        "unlabeled": str(unlabeled) if unlabeled is not None else None,
        "target_unlabeled": str(target_unlabeled) if target_unlabeled is not None else None,
    }
    started: dict[str, Any] | None = None
    if save:
        started = check_out(out, resume=resume, overwrite=overwrite, request=request)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = load_dataset(data, seed=seed, val=val, test=test)
    timings["load_data_s"] = time.perf_counter() - t0
    request["split_sha256"], request["n_items"] = _split_digest(ds.items)
    if started is not None:
        _refuse_changes(Path(out or ""), started, request, keys=("n_items", "split_sha256"))

    t0 = time.perf_counter()
    bb = create_backbone(backbone)
    recipe = get_recipe(strategy, len(bb.groups))
    if not recipe.pretrained:
        bb = create_backbone(backbone, pretrained=False)
    base_key = bb.key
    ds = ds.note_cuts(bb)  # clips longer than the backbone's window: each cut is listed
    timings["load_backbone_s"] = time.perf_counter() - t0
    adapter: dict[str, Any] | None = None
    if recipe.adapter is not None:
        from headstart.adapters import inject_adapter

        # Before the Trainer exists; LoRA's B starts at zero, so the pristine cached embeddings (the probe
        # head's init) stay exact. Adapters go into every group some phase trains.
        top = max(p.n_trainable(len(bb.groups)) for p in recipe.phases)
        adapter = inject_adapter(bb, recipe.adapter, top_groups=top, seed=seed)

    extra: list[str] = []
    if unlabeled is not None:
        from headstart.data.unlabeled import load_unlabeled

        extra = load_unlabeled(unlabeled, bb.modality).sources
    if target_unlabeled is not None:
        if objective is not None:
            raise HeadstartError("domain-adversarial training replaces the loss: give no other objective")
        from headstart.data.unlabeled import load_unlabeled
        from headstart.train.dann import DomainAdversarial

        objective = DomainAdversarial(
            load_unlabeled(target_unlabeled, bb.modality).sources, weight=domain_weight
        )
    t0 = time.perf_counter()
    good, bad = decode_all(bb, [it.source for it in ds.items] + extra, progress=progress)
    if bad and strict:
        listed = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
        raise HeadstartError(
            f"{len(bad)} unreadable input(s):\n{listed}", fix="fix or remove them, or drop --strict"
        )
    labeled_sources = {it.source for it in ds.items}  # never learn from val/test inputs, even unlabeled
    extra = [s for s in dict.fromkeys(extra) if s in good and s not in labeled_sources]
    ds = ds.drop(bad)
    # Content hashes of what was decoded, for split.csv (as probe records them): later verbs skip files
    # that changed since. Memoised per (path, size, mtime), so files the feature cache saw cost nothing.
    item_hashes = _item_hashes(bb, [it.source for it in ds.items])
    timings["decode_s"] = time.perf_counter() - t0
    index = {c: i for i, c in enumerate(ds.classes)}
    splits: dict[str, Split] = {}
    for s in ("train", "val", "test"):
        items = ds.split(s)
        splits[s] = Split(
            examples=[good[it.source] for it in items],
            y=torch.tensor([index[it.label] for it in items], dtype=torch.long),
            sources=[it.source for it in items],
        )
    if extra:
        tr = splits["train"]
        splits["train"] = Split(
            examples=tr.examples + [good[s] for s in extra],
            y=torch.cat([tr.y, torch.full((len(extra),), -1, dtype=torch.long)]),
            sources=tr.sources + extra,
        )
    absent = set(ds.classes) - {it.label for it in ds.split("train")}
    if absent:
        raise HeadstartError(
            f"the training split of {data} has no examples of {sorted(absent)} (unreadable files skipped)",
            fix="add examples of those classes, or remove them",
        )

    pristine_cache: dict[str, np.ndarray] = {}

    def embed_pristine(name: str) -> np.ndarray:
        # Pooled embeddings of the untouched pretrained backbone, through the on-disk feature cache.
        if name not in pristine_cache:
            srcs = splits[name].sources
            feats = embed(bb, srcs, progress=progress) if srcs else None
            if feats is None:
                return np.zeros((0, bb.embed_dim), np.float32)
            row = {p: i for i, p in enumerate(feats.paths)}
            pristine_cache[name] = feats.X[[row[s] for s in srcs]]
        return pristine_cache[name]

    if isinstance(lr, str):
        if lr != "auto":
            raise HeadstartError(f"--lr {lr!r}: give a number or 'auto'")
        from headstart.train.lr_find import lr_find

        found = lr_find(embed_pristine("train"), splits["train"].y.numpy(), len(ds.classes), seed=seed)
        lr = found["suggestion"]
        timings["lr_find_s"] = found["seconds"]
    recipe = recipe.with_overrides(epochs=epochs, lr=lr, batch_size=batch_size)

    run_dir = Path(out) if out else default_run_dir("fit", bb.name)
    work_dir = work_dir_of(run_dir) if save else None
    if work_dir is not None and init_distributed().main:  # only the main process checkpoints
        if not resume:  # a fresh start (check_out refused an interrupted run unless --overwrite)
            shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        if started is None:  # what this run is, so a later --resume can refuse other options or data
            atomic_write_json(work_dir / STARTED_FILE, request)

    trainer = Trainer(
        bb,
        len(ds.classes),
        recipe,
        seed=seed,
        prefix_cache=prefix_cache,
        augment=augment,
        bf16=bf16,
        progress=progress,
        work_dir=work_dir,
        resume=resume,
        budget_s=budget_s,
        embed_pristine=embed_pristine,
        objective=objective,
    )
    trainer.fit(splits["train"], splits["val"])
    timings["train_s"] = trainer.train_seconds

    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    for s in ("train", "val", "test"):
        if len(splits[s]):
            z, y = trainer.labeled_logits(s, splits[s], k=len(bb.groups))
            m = classification_metrics(y.numpy(), z.argmax(1).numpy(), ds.classes, predictions=s != "train")
            m["loss"] = float(torch.nn.functional.cross_entropy(z, y))
            metrics[s] = m
    timings["evaluate_s"] = time.perf_counter() - t0
    groups = trainer.trained_groups
    whole = not recipe.pretrained
    if adapter is not None:
        from headstart.adapters import adapter_state

        delta = adapter_state(bb)  # the base weights never moved: only the adapter is stored
    else:
        delta = delta_state(bb, groups, whole=whole) if (groups or whole) else {}
    head_params = trainer.head.weight.numel() + trainer.head.bias.numel()
    metrics.update(
        {
            "strategy": recipe.name,
            "best_epoch": trainer.best["epoch"],
            "trainable_params": int(
                head_params + sum(v.numel() for k, v in delta.items() if "running" not in k)
            ),
            "backbone_params": bb.card.num_params,
            "train_s": trainer.train_seconds,
            # transfer-set items in the training split + what the objective brought (DANN's target inputs)
            "unlabeled": len(extra) + trainer.objective.n_extra_unlabeled,
            "objective": trainer.objective.describe(),
            "warnings": trainer.warnings,
            "timings": timings,
        }
    )
    if adapter is not None:  # what full fine-tuning would train and store, for comparison
        base = {k: v for k, v in bb.state_dict().items() if ".lora_" not in k}
        metrics["adapter"] = adapter
        metrics["full_trainable_params"] = int(bb.card.num_params + head_params)
        full = sum(v.numel() * v.element_size() for v in base.values()) + 4 * head_params
        metrics["full_bytes"] = int(full)
    summary = ds.summary()
    dist = init_distributed()
    saved: Path | None = None
    if save and dist.main:
        from headstart.model import head_from_linear

        head = head_from_linear(trainer.head)
        info = {
            "kind": "fit",
            "strategy": recipe.name,
            "pretrained": recipe.pretrained,
            "backbone": {
                "name": bb.name,
                "key": base_key,
                "weights_sha256": bb.card.weights_sha256 if recipe.pretrained else None,
                "card": bb.card.to_dict(),
            },
            "preprocess": bb.preprocess.to_dict(),
            "modality": bb.modality,
            "classes": ds.classes,
            "params": {
                "seed": seed,
                "batch_size": recipe.batch_size,
                "augment": augment,
                "prefix_cache": prefix_cache,
                "bf16": bf16,
            },
            "trained_groups": [bb.group_names[i] for i in sorted(groups)]
            if not whole
            else list(bb.group_names),
            "trainable_params": metrics["trainable_params"],
            "objective": metrics["objective"],
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tensors = {}
        if adapter is not None:
            from headstart.adapters import ADAPTER_FILE

            info["adapter"] = {"file": ADAPTER_FILE, **adapter}
            tensors[ADAPTER_FILE] = delta
        elif delta:
            info["delta"] = {"file": DELTA_FILE, "whole": whole}
            tensors[DELTA_FILE] = delta
        split_rows = make_split_rows(
            [it for s in ("train", "val", "test") for it in ds.split(s)], item_hashes
        )
        history = {
            "epochs": trainer.history,
            "best_epoch": trainer.best["epoch"],
            "warnings": trainer.warnings,
        }
        saved = write_run(
            run_dir,
            run=info,
            head=head,
            metrics=to_jsonable(metrics),
            data=to_jsonable(summary),
            split_rows=split_rows,
            tensors=tensors,
            json_files={"history.json": to_jsonable(history), "recipe.json": recipe.to_dict()},
            text_files={"history.csv": history_csv(trainer.history)},
            overwrite=overwrite,
        )
        stored = sum((saved / f).stat().st_size for f in ["head.safetensors", *tensors])
        metrics["stored_bytes"] = stored
        atomic_write_json(saved / "metrics.json", to_jsonable(metrics))
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return FitReport(
        run_dir=saved,
        backbone=bb.name,
        strategy=recipe.name,
        classes=ds.classes,
        metrics=to_jsonable(metrics),
        history=to_jsonable(trainer.history),
        recipe=recipe.to_dict(),
        warnings=list(trainer.warnings),
        data=to_jsonable(summary),
        timings=timings,
    )


def recipe_json(strategy: str, n_groups: int) -> str:
    return json.dumps(get_recipe(strategy, n_groups).to_dict(), indent=2)
