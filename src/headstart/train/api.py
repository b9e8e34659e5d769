"""`fit`: split the data, run a recipe, evaluate, and save a run that stores only the delta.

report = fit("examples/emoji/images", backbone="efficientnet_lite0", strategy="lp-ft")

`run_fit` is the one pipeline of `fit` and `probe`, in named steps: check the output (`check_out`), `_load`
the data, `_build` the backbone and recipe; a closed-form recipe (`head`: no backbone group trains) then
goes to `headstart.train.frozen` (cached embeddings, no Trainer, a run of kind "probe"), any other to
`_decode`, `_train` (the Trainer), `_evaluate` and `_save` (a run of kind "fit").
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headstart.config import FitConfig, ProbeConfig
from headstart.errors import HeadstartError
from headstart.recipes import Recipe, get_recipe
from headstart.train.job import STARTED_FILE, FitJob, FitReport, work_dir_of

if TYPE_CHECKING:
    from headstart.backbones import Backbone
    from headstart.data import Dataset
    from headstart.train.data import Split
    from headstart.train.loop import Trainer
    from headstart.train.objective import Objective

# The trained groups' weights a run stores beside its head (the base backbone is only referenced).
DELTA_FILE = "delta.safetensors"


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
    out: str | Path | None,
    *,
    resume: bool,
    overwrite: bool,
    request: dict[str, Any],
    resumable: bool = True,
) -> dict[str, Any] | None:
    """Refuse, before any work, what would lose a run or resume the wrong one; deletes nothing.

    Returns what the interrupted run was started with when it is resumed (None for a fresh start).
    `resumable`: False for a verb without --resume (probe), which keeps no checkpoints of its own.
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
    if interrupted and resumable:
        raise HeadstartError(
            f"an interrupted run is there: {run_dir} (its checkpoint is in {work_dir}); nothing was changed",
            fix="add --resume to continue it or --overwrite to start over (or choose another --out)",
        )
    if finished:
        raise HeadstartError(
            f"{run_dir} already exists and holds a finished run (nothing was changed)",
            fix="choose another --out, or --overwrite to replace it",
        )
    if not_empty:
        raise HeadstartError(
            f"{run_dir} already exists and is not empty", fix="choose another --out, or --overwrite"
        )
    return None


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


def lora_strategy(options: FitConfig) -> str | Recipe | dict[str, Any]:
    """The strategy, or its recipe with the lora_* options applied (refused for a strategy without LoRA).

    `options` is a FitConfig (or the CLI's Namespace: the same names)."""
    lora = (options.lora_r, options.lora_alpha, options.lora_dropout, options.lora_targets)
    if all(v is None for v in lora):
        return options.strategy
    recipe = get_recipe(options.strategy, 10_000)  # the group count only bounds partial:N
    spec = recipe.adapter
    if spec is None:
        raise HeadstartError(
            f"--lora-* options need a LoRA strategy, not {options.strategy!r}", fix="add --strategy lora"
        )
    r = options.lora_r if options.lora_r is not None else spec.r
    alpha = options.lora_alpha if options.lora_alpha is not None else spec.alpha * r / spec.r  # same alpha/r
    dropout = options.lora_dropout if options.lora_dropout is not None else spec.dropout
    targets = spec.target_modules
    if options.lora_targets:
        targets = tuple(t.strip() for t in options.lora_targets.split(",") if t.strip())
    spec = replace(spec, r=r, alpha=alpha, dropout=dropout, target_modules=targets)
    spec.validate()
    return replace(recipe, adapter=spec)


def fit(data: str | Path, *, objective: Objective | None = None, **options: Any) -> FitReport:
    """Train a strategy on `data` and save the run (head + trained groups only, base referenced by hash).

    `options` are the fields of `headstart.config.FitConfig` (the CLI's flags: same names, same defaults).
    `objective` replaces the loss (distillation, domain-adversarial training); `unlabeled` inputs join the
    training split with label -1 (only an objective that uses them, like distillation, learns from them).
    A recipe that trains no backbone group (`head`) runs as `probe` does: on cached embeddings, no Trainer.
    """
    return run_fit(FitConfig(data, **options), objective=objective)


def closed_form(recipe: Recipe) -> bool:
    """A recipe that trains no backbone group and runs no epoch: its head is the probe's closed form."""
    return (
        recipe.pretrained
        and recipe.adapter is None
        and all(p.train_top == 0 and p.epochs == 0 for p in recipe.phases)
        and any(p.head_init == "probe" for p in recipe.phases)
    )


def run_fit(
    cfg: FitConfig, *, objective: Objective | None = None, probe: ProbeConfig | None = None
) -> FitReport:
    """The one pipeline of `fit` and `probe`: check the output, load, build, then either the frozen head on
    cached features (headstart.train.frozen) or decode, train, evaluate and save with the Trainer.

    `probe`: the probe verb's embedding and head options (it has no --resume); for fit's closed-form
    recipes, the probe's defaults."""
    from headstart.runs import to_jsonable

    verb = "probe" if probe is not None else "fit"
    strategy = lora_strategy(cfg)
    request = _request(cfg, strategy)
    # The output folder's state and writability are checked before any data is read or model loaded.
    started = None
    if cfg.save:
        started = check_out(
            cfg.out, resume=cfg.resume, overwrite=cfg.overwrite, request=request, resumable=verb == "fit"
        )
    timings: dict[str, float] = {}
    ds = _load(cfg, request, started, timings)
    ds, bb, recipe, adapter, base_key = _build(cfg, strategy, ds, timings)
    job = FitJob(cfg, verb, request, started, timings, ds, bb, recipe, adapter, base_key)
    if (
        closed_form(job.recipe)
        and objective is None
        and cfg.unlabeled is None
        and cfg.target_unlabeled is None
    ):
        from headstart.train.frozen import fit_frozen

        return fit_frozen(job, probe if probe is not None else ProbeConfig(**cfg.shared()))
    objective = _objective(job, objective)
    splits, extra = _decode(job)
    trainer = _train(job, splits, objective)
    delta = _delta(job, trainer)
    metrics = _evaluate(job, trainer, splits, delta, n_extra=len(extra))
    saved = _save(job, trainer, metrics, delta)
    return FitReport(
        run_dir=saved,
        backbone=job.bb.name,
        strategy=trainer.recipe.name,
        classes=job.ds.classes,
        metrics=to_jsonable(metrics),
        history=to_jsonable(trainer.history),
        recipe=trainer.recipe.to_dict(),
        warnings=list(trainer.warnings),
        data=to_jsonable(job.ds.summary()),
        timings=job.timings,
    )


def _request(cfg: FitConfig, strategy: Any) -> dict[str, Any]:
    """What the run is started with; --resume refuses to continue a run started with anything else."""
    return {
        "data": str(Path(cfg.data).expanduser().resolve()),
        "backbone": cfg.backbone,
        "strategy": _strategy_name(strategy),
        "seed": cfg.seed,
        "val": cfg.val,
        "test": cfg.test,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "augment": cfg.augment,
        "unlabeled": str(cfg.unlabeled) if cfg.unlabeled is not None else None,
        "target_unlabeled": str(cfg.target_unlabeled) if cfg.target_unlabeled is not None else None,
    }


def _load(
    cfg: FitConfig, request: dict[str, Any], started: dict[str, Any] | None, timings: dict[str, float]
) -> Dataset:
    """The data and its split; a resumed run must see the split it was started on."""
    from headstart.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(cfg.data, seed=cfg.seed, val=cfg.val, test=cfg.test)
    timings["load_data_s"] = time.perf_counter() - t0
    request["split_sha256"], request["n_items"] = _split_digest(ds.items)
    if started is not None:
        _refuse_changes(Path(cfg.out or ""), started, request, keys=("n_items", "split_sha256"))
    return ds


def _build(
    cfg: FitConfig, strategy: Any, ds: Dataset, timings: dict[str, float]
) -> tuple[Dataset, Backbone, Recipe, dict[str, Any] | None, str]:
    """(the data, noting clips cut to the window; the backbone, random init for a from-scratch recipe; the
    recipe with the options' overrides; the adapter's description, if it injects one; the base's key,
    taken before an adapter changes it)."""
    from headstart.backbones import create_backbone

    t0 = time.perf_counter()
    bb = create_backbone(cfg.backbone)
    if ds.modality != bb.modality:
        raise HeadstartError(
            f"{cfg.data} holds {ds.modality} data but {bb.name} is a backbone for {bb.modality}",
            fix=f"pick a {ds.modality} backbone (`headstart backbones` lists them)",
        )
    recipe = get_recipe(strategy, len(bb.groups))
    if not recipe.pretrained:
        bb = create_backbone(cfg.backbone, pretrained=False)
    base_key = bb.key
    ds = ds.note_cuts(bb)  # clips longer than the backbone's window: each cut is listed
    timings["load_backbone_s"] = time.perf_counter() - t0
    adapter: dict[str, Any] | None = None
    if recipe.adapter is not None:
        from headstart.adapters import inject_adapter

        # Before the Trainer exists; LoRA's B starts at zero, so the pristine cached embeddings (the probe
        # head's init) stay exact. Adapters go into every group some phase trains.
        top = max(p.n_trainable(len(bb.groups)) for p in recipe.phases)
        adapter = inject_adapter(bb, recipe.adapter, top_groups=top, seed=cfg.seed)
    lr = cfg.lr if not isinstance(cfg.lr, str) else None  # 'auto' is found by _train, on cached features
    recipe = recipe.with_overrides(epochs=cfg.epochs, lr=lr, batch_size=cfg.batch_size)
    return ds, bb, recipe, adapter, base_key


def _objective(job: FitJob, objective: Objective | None) -> Objective | None:
    """The loss: the caller's, or domain-adversarial training toward --target-unlabeled."""
    if job.cfg.target_unlabeled is None:
        return objective
    if objective is not None:
        raise HeadstartError("domain-adversarial training replaces the loss: give no other objective")
    from headstart.data.unlabeled import load_unlabeled
    from headstart.train.dann import DomainAdversarial

    target = load_unlabeled(job.cfg.target_unlabeled, job.bb.modality).sources
    return DomainAdversarial(target, weight=job.cfg.domain_weight)


def _decode(job: FitJob) -> tuple[dict[str, Split], list[str]]:
    """Every input decoded once: the train/val/test Splits (unlabeled inputs join train with label -1)."""
    from headstart.train.data import Split, decode_all

    extra: list[str] = []
    if job.cfg.unlabeled is not None:
        from headstart.data.unlabeled import load_unlabeled

        extra = load_unlabeled(job.cfg.unlabeled, job.bb.modality).sources
    t0 = time.perf_counter()
    sources = [it.source for it in job.ds.items]
    good, bad = decode_all(job.bb, sources + extra, progress=job.cfg.progress)
    if bad and job.cfg.strict:
        listed = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
        raise HeadstartError(
            f"{len(bad)} unreadable input(s):\n{listed}", fix="fix or remove them, or drop --strict"
        )
    labeled_sources = set(sources)  # never learn from val/test inputs, even unlabeled
    extra = [s for s in dict.fromkeys(extra) if s in good and s not in labeled_sources]
    job.ds = ds = job.ds.drop(bad)
    # Content hashes of what was decoded, for split.csv (as probe records them): later verbs skip files
    # that changed since. Memoised per (path, size, mtime), so files the feature cache saw cost nothing.
    job.item_hashes = _item_hashes(job.bb, [it.source for it in ds.items])
    job.timings["decode_s"] = time.perf_counter() - t0
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
            f"the training split of {job.cfg.data} has no examples of {sorted(absent)} "
            "(unreadable files skipped)",
            fix="add examples of those classes, or remove them",
        )
    return splits, extra


def _train(job: FitJob, splits: dict[str, Split], objective: Objective | None) -> Trainer:
    """The Trainer runs the recipe (after the learning-rate range test, for --lr auto)."""
    from headstart.features import embed
    from headstart.train.loop import Trainer

    cfg, bb = job.cfg, job.bb
    pristine_cache: dict[str, np.ndarray] = {}

    def embed_pristine(name: str) -> np.ndarray:
        # Pooled embeddings of the untouched pretrained backbone, through the on-disk feature cache.
        if name not in pristine_cache:
            srcs = splits[name].sources
            if not srcs:
                return np.zeros((0, bb.embed_dim), np.float32)
            feats = embed(bb, srcs, progress=cfg.progress)
            row = {p: i for i, p in enumerate(feats.paths)}
            pristine_cache[name] = feats.X[[row[s] for s in srcs]]
        return pristine_cache[name]

    recipe = job.recipe
    if cfg.lr == "auto":
        from headstart.train.lr_find import lr_find

        found = lr_find(
            embed_pristine("train"), splits["train"].y.numpy(), len(job.ds.classes), seed=cfg.seed
        )
        recipe = recipe.with_overrides(lr=found["suggestion"])
        job.timings["lr_find_s"] = found["seconds"]
    trainer = Trainer(
        bb,
        len(job.ds.classes),
        recipe,
        seed=cfg.seed,
        prefix_cache=cfg.prefix_cache,
        augment=cfg.augment,
        device=cfg.device,
        precision="bf16" if cfg.bf16 else cfg.precision,
        progress=cfg.progress,
        work_dir=job.open_work_dir(),
        resume=cfg.resume,
        budget_s=cfg.budget_s,
        embed_pristine=embed_pristine,
        objective=objective,
    )
    trainer.fit(splits["train"], splits["val"])
    job.timings["train_s"] = trainer.train_seconds
    return trainer


def _delta(job: FitJob, trainer: Trainer) -> dict[str, torch.Tensor]:
    """What the run stores beside the head: the adapter, or the trained groups (all, from scratch)."""
    if job.adapter is not None:
        from headstart.adapters import adapter_state

        return adapter_state(job.bb)  # the base weights never moved: only the adapter is stored
    whole = not trainer.recipe.pretrained
    groups = trainer.trained_groups
    return delta_state(job.bb, groups, whole=whole) if (groups or whole) else {}


def _evaluate(
    job: FitJob, trainer: Trainer, splits: dict[str, Split], delta: dict[str, torch.Tensor], *, n_extra: int
) -> dict[str, Any]:
    """Metrics per split of the trained model, and what it trained and stores."""
    from headstart.metrics import classification_metrics

    bb, classes = job.bb, job.ds.classes
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    for s in ("train", "val", "test"):
        if len(splits[s]):
            z, y = trainer.labeled_logits(s, splits[s], k=len(bb.groups))
            m = classification_metrics(y.numpy(), z.argmax(1).numpy(), classes, predictions=s != "train")
            m["loss"] = float(torch.nn.functional.cross_entropy(z, y))
            metrics[s] = m
    job.timings["evaluate_s"] = time.perf_counter() - t0
    head_params = trainer.head.weight.numel() + trainer.head.bias.numel()
    metrics.update(
        {
            "strategy": trainer.recipe.name,
            "best_epoch": trainer.best["epoch"],
            "trainable_params": int(
                head_params + sum(v.numel() for k, v in delta.items() if "running" not in k)
            ),
            "backbone_params": bb.card.num_params,
            "train_s": trainer.train_seconds,
            # transfer-set items in the training split + what the objective brought (DANN's target inputs)
            "unlabeled": n_extra + trainer.objective.n_extra_unlabeled,
            "objective": trainer.objective.describe(),
            "warnings": trainer.warnings,
            "timings": job.timings,
        }
    )
    if job.adapter is not None:  # what full fine-tuning would train and store, for comparison
        base = {k: v for k, v in bb.state_dict().items() if ".lora_" not in k}
        metrics["adapter"] = job.adapter
        metrics["full_trainable_params"] = int(bb.card.num_params + head_params)
        full = sum(v.numel() * v.element_size() for v in base.values()) + 4 * head_params
        metrics["full_bytes"] = int(full)
    return metrics


def _run_info(job: FitJob, trainer: Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
    """run.json of a trained run (kind "fit"): the base by reference, what trained, how."""
    from headstart.runs import library_versions

    bb, recipe, cfg = job.bb, trainer.recipe, job.cfg
    whole = not recipe.pretrained
    return {
        "kind": "fit",
        "strategy": recipe.name,
        "pretrained": recipe.pretrained,
        "backbone": {
            "name": bb.name,
            "key": job.base_key,
            "weights_sha256": bb.card.weights_sha256 if recipe.pretrained else None,
            "card": bb.card.to_dict(),
        },
        "preprocess": bb.preprocess.to_dict(),
        "modality": bb.modality,
        "classes": job.ds.classes,
        "params": {
            "seed": cfg.seed,
            "batch_size": recipe.batch_size,
            "augment": cfg.augment,
            "prefix_cache": cfg.prefix_cache,
            "bf16": cfg.bf16,
        },
        "engine": trainer.engine.describe(),  # device, precision (and why), world size
        "trained_groups": [bb.group_names[i] for i in sorted(trainer.trained_groups)]
        if not whole
        else list(bb.group_names),
        "trainable_params": metrics["trainable_params"],
        "objective": metrics["objective"],
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _save(
    job: FitJob, trainer: Trainer, metrics: dict[str, Any], delta: dict[str, torch.Tensor]
) -> Path | None:
    """Write the run (head + delta, history, recipe) in one rename; the work folder goes once it is in."""
    from headstart.fileio import atomic_write_json
    from headstart.model import head_from_linear
    from headstart.runs import make_split_rows, to_jsonable, write_run
    from headstart.train.engine import is_main_process

    if not job.cfg.save or not is_main_process():
        return None
    info = _run_info(job, trainer, metrics)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    if job.adapter is not None:
        from headstart.adapters import ADAPTER_FILE

        info["adapter"] = {"file": ADAPTER_FILE, **job.adapter}
        tensors[ADAPTER_FILE] = delta
    elif delta:
        info["delta"] = {"file": DELTA_FILE, "whole": not trainer.recipe.pretrained}
        tensors[DELTA_FILE] = delta
    ds = job.ds
    split_rows = make_split_rows(
        [it for s in ("train", "val", "test") for it in ds.split(s)], job.item_hashes
    )
    history = {"epochs": trainer.history, "best_epoch": trainer.best["epoch"], "warnings": trainer.warnings}
    saved = write_run(
        job.run_dir,
        run=info,
        head=head_from_linear(trainer.head),
        metrics=to_jsonable(metrics),
        data=to_jsonable(ds.summary()),
        split_rows=split_rows,
        tensors=tensors,
        json_files={"history.json": to_jsonable(history), "recipe.json": trainer.recipe.to_dict()},
        text_files={"history.csv": history_csv(trainer.history)},
        overwrite=job.cfg.overwrite,
    )
    metrics["stored_bytes"] = sum((saved / f).stat().st_size for f in ["head.safetensors", *tensors])
    atomic_write_json(saved / "metrics.json", to_jsonable(metrics))
    shutil.rmtree(work_dir_of(job.run_dir), ignore_errors=True)
    return saved
