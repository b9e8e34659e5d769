"""The one training loop: a Recipe's phases, their epochs, the steps; everything else is a callback.

A Task is what trains (headstart.train.task): `Classification` (a backbone's layer groups and a linear
head; the loss an Objective: cross-entropy, distillation, domain-adversarial) or continued pretraining's
masked / causal LM (headstart.pretrain.lm). Per phase the task sets what trains; the loop builds AdamW over
the task's parameter groups with the phase's schedule and runs the steps through the Engine (device,
precision and processes, by Accelerate: headstart.train.engine). Callbacks (headstart.train.callbacks)
record the history, stop early, keep the best weights, recalibrate BatchNorm, warn of overfitting, keep
the time budget, checkpoint and resume.

Data-parallel under `torchrun` (NCCL on GPUs, gloo on CPUs): every process takes the same global batch
order and its own share of each batch; stop decisions are agreed by all processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
import torch

from headstart.backbones.base import Backbone
from headstart.imbalance import Imbalance
from headstart.recipes import Phase, Recipe
from headstart.train.averaging import Ema, Soup
from headstart.train.callbacks import (
    BestWeights,
    Budget,
    Callback,
    Checkpoint,
    EarlyStopping,
    GapWarning,
    History,
    Position,
    PreciseBatchNorm,
    Progress,
)
from headstart.train.classify import Classification
from headstart.train.engine import Engine
from headstart.train.groups import lr_lambda
from headstart.train.objective import Objective
from headstart.train.task import StepOut, StepTotals, Task


class RunOptions(TypedDict, total=False):
    """How a Trainer runs whatever its task (defaults in `Trainer._setup`): `seed`, the engine (`device`,
    `precision`), `progress`, checkpoints (`work_dir`, `resume`), the clock `budget_s`, `keep_best` (False:
    the last weights, not the best) and extra `callbacks` (run after the default ones)."""

    seed: int
    device: str
    precision: str
    progress: bool
    work_dir: Path | None
    resume: bool
    budget_s: float | None
    keep_best: bool
    callbacks: list[Callback] | None


class Trainer:
    """Runs a Recipe. `Trainer(backbone, n_classes, recipe)` trains a classifier on (train, val) Splits
    (see Classification for `embed_pristine` and the frozen-prefix cache); `Trainer.for_task(task, recipe)`
    trains any other Task. What the task knows (the classifier's `head`, `net`, `inputs`, `logits`) reads
    through the trainer."""

    def __init__(
        self,
        backbone: Backbone,
        n_classes: int,
        recipe: Recipe,
        *,
        prefix_cache: bool = True,
        augment: bool | None = None,
        embed_pristine: Callable[[str], np.ndarray] | None = None,
        eval_batch_size: int | None = None,
        objective: Objective | None = None,
        imbalance: Imbalance | None = None,
        task_class: Callable[..., Classification] = Classification,
        **options: Unpack[RunOptions],
    ) -> None:
        self._setup(recipe, **options)
        self.task = task_class(  # a subclass trains other targets (headstart.train.targets_task)
            backbone,
            n_classes,
            pretrained=recipe.pretrained,
            seed=self.seed,
            prefix_cache=prefix_cache,
            augment=augment,
            embed_pristine=embed_pristine,
            eval_batch_size=eval_batch_size,
            objective=objective,
            engine=self.engine,
            imbalance=imbalance,
        )

    @classmethod
    def for_task(cls, task: Task, recipe: Recipe, **options: Unpack[RunOptions]) -> Trainer:
        """A Trainer of any Task; `keep_best=False` returns the last weights instead of the best."""
        self = cls.__new__(cls)
        self._setup(recipe, **options)
        self.task = task
        return self

    def _setup(
        self,
        recipe: Recipe,
        *,
        seed: int = 0,
        device: str = "auto",
        precision: str = "auto",
        progress: bool = False,
        work_dir: Path | None = None,
        resume: bool = False,
        budget_s: float | None = None,
        keep_best: bool = True,
        callbacks: list[Callback] | None = None,
    ) -> None:
        """Everything but the task (the defaults of RunOptions live here, once)."""
        self.recipe = recipe
        self.engine = Engine.create(device, precision)
        self.seed = seed
        self.progress = progress
        defaults = default_callbacks(
            recipe, keep_best=keep_best, budget_s=budget_s, work_dir=work_dir, resume=resume
        )
        self.callbacks: list[Callback] = [*defaults, *(callbacks or [])]  # the caller's after, in their order
        # A resume goes on in its checkpoint's precision; another device type or precision is refused here.
        self.resumed_precision = next(
            (cb.resumed_precision(self.engine) for cb in self.callbacks if isinstance(cb, Checkpoint)), None
        )
        self.history: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.best: dict[str, Any] = {"score": None, "state": None, "epoch": None}
        self.pos = Position()
        self.phase: Phase = recipe.phases[0] if recipe.phases else Phase("none")
        self.row: dict[str, Any] | None = None  # the last evaluation's history row
        self.score: tuple[float, ...] = ()
        self.stop_epoch = self.stop_phase = self.stop_fit = False
        self.opt: Any = None
        self.sched: Any = None
        self.params: list[torch.nn.Parameter] = []
        self.steps = self.local_batch = self.micro_batch = 0
        self.started = self.epoch_started = 0.0
        self.step_seconds = self.epoch_train_seconds = self.train_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        task = self.__dict__.get("task")
        if task is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(task, name)

    def _emit(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self, train: Any = None, val: Any = None) -> Trainer:
        self.started = time.perf_counter()
        try:
            self.task.setup(self, train, val)
            self.place()
            self.engine.start(self._precision())
            self._emit("before_fit")
            for pi in range(self.pos.phase, len(self.recipe.phases)):
                if self.stop_fit:
                    break
                self._phase(pi)
            self._emit("after_fit")
            self.task.end_fit(self)
        finally:
            self._emit("cleanup")
        self.train_seconds = time.perf_counter() - self.started
        return self

    def place(self) -> None:
        """Every module of the task (the objective's own ones too, made in setup) on the engine's device."""
        for m in self.task.modules():
            self.engine.place(m)

    def _precision(self) -> str:
        """The precision to run: as asked, or what `auto` means here (on a CPU: the task's timed step); a
        resumed run's is its checkpoint's."""
        if self.resumed_precision is not None:
            self.engine.precision, self.engine.reason = self.resumed_precision, "resumed: the checkpoint's"
            return self.resumed_precision
        timing = None
        if self.engine.asked == "auto" and self.engine.device.type == "cpu":
            timing = self.task.timing(self)
        key, timer = timing if timing is not None else (None, None)
        return self.engine.choose_precision(timer, key)

    def _phase(self, pi: int) -> None:
        phase = self.phase = self.recipe.phases[pi]
        if pi != self.pos.phase:  # a new phase, not the one a checkpoint resumes inside
            self.pos = Position(phase=pi, epoch=self.pos.epoch)
        self.task.begin_phase(self, phase)
        if not self.pos.init_done:
            self.row = None
            if self.task.init_phase(self, phase):
                t0 = time.perf_counter()
                metrics = self.task.evaluate(self, None)
                self.row = self._row("init", 0, metrics, None, time.perf_counter() - t0)
                self.score = self.task.score(metrics)
            self.pos.init_done = True
            self._emit("after_init")
        if phase.epochs == 0:
            return
        self.task.prepare_phase(self, phase)
        model = self.engine.prepare(self.task.model)
        world = self.engine.world
        self.local_batch = max(1, self.recipe.batch_size // world)
        self.steps = math.ceil(self.task.n_items() // world / self.local_batch)
        groups = self.task.param_groups(phase)
        self.params = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups)
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(phase, self.steps * phase.epochs))
        self.opt = self.engine.prepare_optimizer(opt)
        self._emit("before_train")
        self.stop_phase = False
        for e in range(self.pos.done_in_phase, phase.epochs):
            self._epoch(model, phase, e)
            if self.stop_phase or self.stop_fit:
                break

    def _epoch(self, model: torch.nn.Module, phase: Phase, e: int) -> None:
        self.pos.epoch += 1
        self.epoch_started = time.perf_counter()
        seed = self.seed * 1_000_003 + self.pos.epoch
        torch.manual_seed(seed)  # dropout etc.: a function of the epoch, so resume replays it
        gen = torch.Generator().manual_seed(seed)
        order = self.task.epoch_order(seed, gen)
        world, rank = self.engine.world, self.engine.rank
        order = order[: len(order) // world * world][rank::world]  # every process: its share, same steps
        self.task.begin_epoch(self, phase)
        totals = StepTotals()
        self.stop_epoch = False
        self._emit("before_epoch")
        for si, b in enumerate(range(0, len(order), self.local_batch)):
            t_step = time.perf_counter()
            done = (e * self.steps + si) / max(1, self.steps * phase.epochs)
            self.task.prefetch(order[b + self.local_batch : b + 2 * self.local_batch])
            out = self._step(model, order[b : b + self.local_batch], gen, done)
            totals.add(out)
            self.step_seconds = time.perf_counter() - t_step
            self._emit("after_step")
            if self.stop_epoch:
                break
        self.epoch_train_seconds = time.perf_counter() - self.epoch_started
        totals = self._over_processes(totals)
        self.pos.done_in_phase = e + 1
        self._emit("after_train")
        self.task.end_epoch(self, phase)
        metrics = self.task.evaluate(self, totals)
        lr = self.opt.param_groups[0]["lr"]
        self.row = self._row("train", e + 1, metrics, lr, time.perf_counter() - self.epoch_started)
        self.row["train_seconds"] = self.epoch_train_seconds
        self.row["steps"] = totals.steps
        self.row["micro_batch"] = self.micro_batch  # items per forward/backward (headstart.train.micro_batch)
        self.score = self.task.score(metrics)
        self._emit("after_epoch")

    def _step(self, model: torch.nn.Module, batch: Any, gen: torch.Generator, done: float) -> StepOut:
        """One optimizer step over `batch`, run as the task's micro-batches (each backward scaled by its
        share of the batch, gradients summed, synchronised across processes on the last one)."""
        micro = self.micro_batch = max(1, min(len(batch), self.task.micro_batch(self, len(batch))))
        chunks = [batch[i : i + micro] for i in range(0, len(batch), micro)]
        merged = StepOut(None)
        self.opt.zero_grad(set_to_none=True)
        for ci, chunk in enumerate(chunks):
            with self.engine.no_sync(model, ci < len(chunks) - 1):
                out = self.task.step(self, model, chunk, gen, done)
                if out.loss is not None:
                    scale = len(chunk) / len(batch)
                    self.engine.backward(out.loss * scale if len(chunks) > 1 else out.loss)
                    merged.loss = out.loss.detach()
            merged.total += out.total
            merged.count += out.count
            merged.correct += out.correct
            merged.labeled += out.labeled
        if merged.loss is not None:
            if self.task.max_grad_norm is not None:
                self.engine.clip_grad_norm_(self.params, self.task.max_grad_norm)
            self.opt.step()
            self.sched.step()
        return merged

    def _over_processes(self, t: StepTotals) -> StepTotals:
        """The epoch's training metrics over every process's share of the batches."""
        if self.engine.world == 1:
            return t
        total, count, correct, labeled = self.engine.sum_over_processes(
            [t.total, t.count, t.correct, t.labeled]
        )
        return StepTotals(total, int(count), int(correct), int(labeled), t.steps)

    def _row(
        self, kind: str, phase_epoch: int, metrics: dict[str, float], lr: float | None, seconds: float
    ) -> dict[str, Any]:
        return {
            "epoch": self.pos.epoch,
            "phase": self.phase.name,
            "phase_epoch": phase_epoch,
            "kind": kind,
            **metrics,
            "lr": lr,
            "seconds": seconds,
        }


def default_callbacks(
    recipe: Recipe | None = None,
    *,
    keep_best: bool = True,
    budget_s: float | None = None,
    work_dir: Path | None = None,
    resume: bool = False,
) -> list[Callback]:
    """What `fit` runs, in order: the row is recorded before anything judges it, and the checkpoint is
    written last, with every decision of the epoch in it. The recipe's weight averaging
    (headstart.train.averaging): the soup keeps what best-weights keeps, and EMA swaps its average in
    before precise BatchNorm and validation, and out after every judge of the epoch."""
    out: list[Callback] = [Progress(), History(), EarlyStopping()]
    if keep_best:
        out.append(BestWeights())
    if recipe is not None and recipe.soup:
        out.append(Soup(recipe.soup))
    if recipe is not None and any(p.ema for p in recipe.phases):
        out.append(Ema())
    out += [PreciseBatchNorm(), GapWarning()]
    if budget_s is not None:
        out.append(Budget(budget_s, closing_evals=max(0, recipe.soup - 1) if recipe is not None else 0))
    if work_dir is not None:
        out.append(Checkpoint(work_dir, resume))
    return out
