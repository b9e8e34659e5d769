"""`fit`: split the data, run a recipe, evaluate, and save a run that stores only the delta.

report = fit("examples/emoji/images", backbone="efficientnet_lite0", strategy="lp-ft")

`run_fit` is the one pipeline of `fit` and `probe`, in named steps: check the output (`check_out`, in
headstart.train.resume), `_load` the data, `_build` the backbone and recipe; a closed-form recipe (`head`:
no backbone group trains) then goes to `headstart.train.frozen` (cached embeddings, no Trainer, a run of
kind "probe"), any other to `_decode`, `_train` (the Trainer), then headstart.train.save's
`trained_delta`, `evaluate_trained` and `save_trained` (a run of kind "fit").
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headstart.config import FitConfig, ProbeConfig
from headstart.errors import HeadstartError
from headstart.recipes import LoraSpec, Recipe, get_recipe
from headstart.train.job import FitJob, FitReport
from headstart.train.resume import check_out, refuse_changes, request_of, split_digest

if TYPE_CHECKING:
    from collections.abc import Callable

    from headstart.backbones import Backbone
    from headstart.data import Dataset, Item
    from headstart.train.classify import Classification
    from headstart.train.data import Split
    from headstart.train.loop import Trainer
    from headstart.train.objective import Objective

    Targets = Callable[[Dataset, list[Item]], np.ndarray]  # a task shape's targets of items


def _item_hashes(bb: Any, sources: list[str]) -> dict[str, str]:
    out = {}
    for src in sources:
        try:
            out[src] = bb.item_hash(src)
        except OSError:  # gone since it was decoded: recorded without a hash (later checks skip it)
            out[src] = ""
    return out


def lora_strategy(options: FitConfig) -> str | Recipe | dict[str, Any]:
    """The strategy, or its recipe with the lora_* options applied (refused for a strategy without LoRA).

    `options` is a FitConfig (or the CLI's Namespace: the same names)."""
    lora = (options.lora_r, options.lora_alpha, options.lora_dropout, options.lora_targets)
    if all(v is None for v in lora):
        return options.strategy
    recipe = get_recipe(options.strategy, 10_000)  # the group count only bounds partial:N
    spec = recipe.adapter
    if not isinstance(spec, LoraSpec):
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
    from headstart.shapes import shape_of_task
    from headstart.train.save import evaluate_trained, save_trained, trained_delta

    shape = shape_of_task(cfg.task)
    if shape is not None:  # multi-label, regression, tagging, generation: the shape's own pipeline
        return shape.probe(probe) if probe is not None else shape.fit(cfg)  # type: ignore[return-value]
    verb = "probe" if probe is not None else "fit"
    strategy = lora_strategy(cfg)
    request = request_of(cfg, strategy)
    # The output folder's state and writability are checked before any data is read or model loaded.
    started = None
    if cfg.save:
        started = check_out(
            cfg.out,
            resume=cfg.resume,
            overwrite=cfg.overwrite,
            request=request,
            resumable=verb == "fit",
            engine=(cfg.device, cfg.precision),
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
    _refuse_mixup(job, objective)
    splits, extra = _decode(job)
    trainer = _train(job, splits, objective)
    delta = trained_delta(job, trainer)
    metrics = evaluate_trained(job, trainer, splits, delta, n_extra=len(extra))
    saved = save_trained(job, trainer, metrics, delta)
    return job.report(saved, trainer.recipe, metrics, trainer.history, list(trainer.warnings))


def _load(
    cfg: FitConfig, request: dict[str, Any], started: dict[str, Any] | None, timings: dict[str, float]
) -> Dataset:
    """The data and its split; a resumed run must see the split it was started on."""
    from headstart.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(cfg.data, seed=cfg.seed, val=cfg.val, test=cfg.test, task=cfg.task)
    timings["load_data_s"] = time.perf_counter() - t0
    request["split_sha256"], request["n_items"] = split_digest(ds.items)
    if started is not None:
        refuse_changes(Path(cfg.out or ""), started, request, keys=("n_items", "split_sha256"))
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
    if cfg.input_size:
        if bb.modality != "image":
            raise HeadstartError(
                f"--input-size {cfg.input_size}: {bb.name} reads {bb.modality}, not images",
                fix="drop --input-size",
            )
        bb.at_input_size(cfg.input_size)  # the run records size:N:<backbone>
    if recipe.pooled == "all-depths":
        bb.all_depths()  # run.json names it depths:<backbone>: predict, serve and export rebuild it
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
    """The loss: the caller's, the recipe's (`objective: contrastive`: SetFit's pairs), or domain-adversarial
    training toward --target-unlabeled."""
    if job.recipe.objective == "contrastive":
        from headstart.train.setfit import ContrastivePairs, refuse_unusable

        if objective is not None or job.cfg.target_unlabeled is not None:
            raise HeadstartError(
                f"strategy {job.recipe.name!r} brings its own loss (contrastive pairs)",
                fix="drop --target-unlabeled (or the objective), or pick another strategy",
            )
        index = {c: i for i, c in enumerate(job.ds.classes)}  # before decoding: a cheap refusal
        train = [index[it.label] for it in job.ds.split("train")]
        refuse_unusable(job.bb.modality, job.bb.name, train, job.ds.classes)
        return ContrastivePairs(job.ds.classes)
    if job.cfg.target_unlabeled is None:
        return objective
    if objective is not None:
        raise HeadstartError("domain-adversarial training replaces the loss: give no other objective")
    from headstart.data.unlabeled import load_unlabeled
    from headstart.train.dann import DomainAdversarial

    target = load_unlabeled(job.cfg.target_unlabeled, job.bb.modality).sources
    return DomainAdversarial(target, weight=job.cfg.domain_weight)


def _refuse_mixup(job: FitJob, objective: Objective | None) -> None:
    """Mixup mixes image tensors and both labels under plain cross-entropy: refused elsewhere, before any
    decoding."""
    phase = next((p for p in job.recipe.phases if p.mixup), None)
    if phase is not None and (job.bb.modality != "image" or objective is not None):
        raise HeadstartError(
            f"recipe {job.recipe.name!r}, phase {phase.name!r}: mixup applies to image data under the plain "
            f"cross-entropy loss, not to {job.bb.modality} data"
            + (f" with {objective.describe()['name']}" if objective is not None else ""),
            fix="remove mixup from the recipe",
        )


def _decode(job: FitJob, targets: Targets | None = None) -> tuple[dict[str, Split], list[str]]:
    """Every input checked once (unreadable ones skipped, or refused with --strict), then the
    train/val/test Splits that decode as batches need them (unlabeled inputs join train with label -1).
    `targets(ds, items)`: another task shape's float targets instead of class indices."""
    from headstart.data.images import DEFAULT_MAX_PIXELS
    from headstart.train.data import check_all, streamed_split

    extra: list[str] = []
    if job.cfg.unlabeled is not None:
        from headstart.data.unlabeled import load_unlabeled

        extra = load_unlabeled(job.cfg.unlabeled, job.bb.modality).sources
    t0 = time.perf_counter()
    sources = [it.source for it in job.ds.items]
    max_pixels = job.cfg.max_pixels or DEFAULT_MAX_PIXELS
    good, bad = check_all(job.bb, sources + extra, progress=job.cfg.progress, max_pixels=max_pixels)
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
        srcs = [it.source for it in items] + (extra if s == "train" else [])
        if targets is None:
            y = [index[it.label] for it in items] + ([-1] * len(extra) if s == "train" else [])
            t = torch.tensor(y, dtype=torch.long)
        else:  # another task shape's targets (headstart.shapes.linear): floats
            t = torch.from_numpy(np.asarray(targets(ds, items), np.float32))
        splits[s] = streamed_split(job.bb, srcs, t, max_pixels=max_pixels)
    absent = set(ds.classes) - {it.label for it in ds.split("train")} if targets is None else set()
    if absent:
        raise HeadstartError(
            f"the training split of {job.cfg.data} has no examples of {sorted(absent)} "
            "(unreadable files skipped)",
            fix="add examples of those classes, or remove them",
        )
    return splits, extra


def _train(
    job: FitJob,
    splits: dict[str, Split],
    objective: Objective | None,
    task: tuple[Callable[..., Classification], int] | None = None,
) -> Trainer:
    """The Trainer runs the recipe (after the learning-rate range test, for --lr auto). `task`: (a
    Classification subclass, its output count) for other targets (headstart.train.targets_task)."""
    from headstart.features import embed
    from headstart.imbalance import train_imbalance
    from headstart.train.classify import Classification
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
    task_class, n_out = task or (Classification, len(job.ds.classes))
    imbalance = train_imbalance(splits["train"].y.numpy(), n_out, cfg.imbalance) if task is None else None
    trainer = Trainer(
        bb,
        n_out,
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
        imbalance=imbalance,
        task_class=task_class,
    )
    trainer.fit(splits["train"], splits["val"])
    job.timings["train_s"] = trainer.train_seconds
    return trainer
