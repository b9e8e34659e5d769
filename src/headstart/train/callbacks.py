"""Everything the training loop does besides stepping, as callbacks (fastai's shape): history, progress,
early stopping, best weights, precise BatchNorm, the overfitting warning, the time budget and checkpoints.

A callback reads and writes the Trainer's state (`pos`, `row`, `score`, `best`, `history`, `warnings`, the
stop flags) at the loop's hooks, in list order:

    before_fit -> per phase: after_init (the phase's start evaluated, or not) -> before_train (optimizer
    built) -> per epoch: before_epoch -> after_step ... -> after_train (steps done) -> after_epoch
    (validation done) -> after_fit; `cleanup` runs last, also after an error.

`headstart.train.loop.default_callbacks` is the list `fit` runs (with the weight averaging of
headstart.train.averaging); a test adds its own (tests/kill_after_epoch.py kills the process
right after a checkpoint, to test --resume).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headstart.errors import HeadstartError
from headstart.train.checkpoint import engine_record, load_checkpoint, resumed_precision, save_checkpoint

if TYPE_CHECKING:
    from headstart.train.engine import Engine
    from headstart.train.loop import Trainer

log = logging.getLogger(__name__)

GAP_WARNING = 0.2  # train-val accuracy gap that, once widening, is worth a warning


@dataclass
class Position:
    """Where training stands (what a checkpoint resumes from): the phase, its epochs done, epochs in all,
    whether the phase's start was set up, and early stopping's state within the phase."""

    phase: int = 0
    done_in_phase: int = 0
    epoch: int = 0
    init_done: bool = False
    phase_best: list[float] | None = None
    bad_epochs: int = 0


class Callback:
    """No-op hooks; subclasses override what they need."""

    def before_fit(self, trainer: Trainer) -> None: ...
    def after_init(self, trainer: Trainer) -> None: ...
    def before_train(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_fit(self, trainer: Trainer) -> None: ...
    def cleanup(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of this callback for a resume (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class History(Callback):
    """One row per evaluation (the phase's start, each epoch) in `trainer.history`."""

    def after_init(self, trainer: Trainer) -> None:
        if trainer.row is not None:
            trainer.history.append(trainer.row)

    def after_epoch(self, trainer: Trainer) -> None:
        trainer.history.append(trainer.row)


class Progress(Callback):
    """A progress bar per epoch and a line per evaluation on stderr (main process, when asked)."""

    def __init__(self) -> None:
        self._bar = ExitStack()
        self._advance: Any = None

    def before_epoch(self, trainer: Trainer) -> None:
        from headstart.progress import progress_bar

        p = trainer.phase
        label = f"{p.name} epoch {trainer.pos.done_in_phase + 1}/{p.epochs}"
        on = trainer.progress and trainer.engine.main
        self._advance = self._bar.enter_context(progress_bar(trainer.steps, label, enabled=on))

    def after_step(self, trainer: Trainer) -> None:
        self._advance(1)

    def after_train(self, trainer: Trainer) -> None:
        self._bar.close()

    def cleanup(self, trainer: Trainer) -> None:
        self._bar.close()

    def after_init(self, trainer: Trainer) -> None:
        if trainer.row is not None:
            self._print(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        self._print(trainer)

    def _print(self, trainer: Trainer) -> None:
        if not (trainer.progress and trainer.engine.main):
            return
        from rich.console import Console

        r = trainer.row
        assert r is not None
        Console(stderr=True, highlight=False).print(
            f"{r['phase']} {r['kind']} {r['phase_epoch']}: {trainer.task.describe_metrics(r)} | "
            f"{r['seconds']:.1f}s"
        )


class EarlyStopping(Callback):
    """Stops a phase after `phase.patience` epochs without a better score (the task says what better is);
    every process stops together."""

    def after_init(self, trainer: Trainer) -> None:
        if trainer.row is not None and trainer.task.start_seeds_patience:
            trainer.pos.phase_best = list(trainer.score)

    def after_epoch(self, trainer: Trainer) -> None:
        pos, score = trainer.pos, trainer.score
        if pos.phase_best is None or trainer.task.improved(score, tuple(pos.phase_best)):
            pos.phase_best, pos.bad_epochs = list(score), 0
        else:
            pos.bad_epochs += 1
        patience = trainer.phase.patience
        trainer.stop_phase = trainer.engine.agree(patience is not None and pos.bad_epochs >= patience)
        if trainer.stop_phase:
            log.info(
                "early stop in phase %s after %d epochs without improvement",
                trainer.phase.name,
                pos.bad_epochs,
            )


class CandidateWatcher(Callback):
    """Sees every evaluation whose weights a fit may return: the phase's start where the task allows it
    (e.g. LP-FT's probe head), then every epoch. One rule for best-weights and the soup alike."""

    def after_init(self, trainer: Trainer) -> None:
        if trainer.row is not None and trainer.task.start_is_candidate:
            self.consider(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        self.consider(trainer)

    def consider(self, trainer: Trainer) -> None:
        """One candidate evaluation: `trainer.score` and the task's weights as they are now."""
        raise NotImplementedError


class BestWeights(CandidateWatcher):
    """Keeps the weights of the best-scoring evaluation and restores them at the end: early stopping
    returns the best weights, not the last."""

    def consider(self, trainer: Trainer) -> None:
        best = trainer.best
        if best["score"] is None or trainer.score > tuple(best["score"]):
            state = {k: v.detach().clone() for k, v in trainer.task.state_dict().items()}
            trainer.best = {"score": list(trainer.score), "state": state, "epoch": trainer.pos.epoch}

    def after_fit(self, trainer: Trainer) -> None:
        if trainer.best["state"] is not None:
            trainer.task.load_state_dict(trainer.best["state"])


class PreciseBatchNorm(Callback):
    """After each epoch of a phase with `recalibrate_bn`: exact BatchNorm statistics of the trained groups
    over the (unaugmented) training set, instead of running averages that lag fast-moving weights."""

    @torch.no_grad()
    def after_train(self, trainer: Trainer) -> None:
        task = trainer.task
        if not trainer.phase.recalibrate_bn or not hasattr(task, "trained_batchnorms"):
            return
        bns = task.trained_batchnorms()
        if not bns:
            return
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        task.forward_training_set(trainer)
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


class GapWarning(Callback):
    """Warns once when train accuracy pulls away from validation accuracy three epochs running."""

    def after_epoch(self, trainer: Trainer) -> None:
        rows = [
            r
            for r in trainer.history
            if r["kind"] == "train" and "train_acc" in r and not math.isnan(r["val_acc"])
        ]
        if len(rows) < 3:
            return
        gaps = [r["train_acc"] - r["val_acc"] for r in rows[-3:]]
        if gaps[-1] > GAP_WARNING and gaps[-1] > gaps[-2] > gaps[-3]:
            msg = (
                f"overfitting: train accuracy {rows[-1]['train_acc']:.2f} vs val {rows[-1]['val_acc']:.2f} "
                f"at epoch {rows[-1]['epoch']}, and the gap is widening (early stopping keeps the best epoch)"
            )
            if not any(w.startswith("overfitting") for w in trainer.warnings):
                trainer.warnings.append(msg)
                log.warning(msg)


class Budget(Callback):
    """Stops when one more step and the epoch's closing work (BatchNorm pass, validation) would end past
    `seconds` from the start of `fit`: mid-epoch and ahead of time. Every process stops at the same step.

    `replayed`: the steps taken will run once more after this fit, within the same `seconds` (adapt's
    control replays the adaptation's steps), so their time is kept in reserve as they are taken.
    `closing_evals`: evaluations that run after the last epoch (a greedy soup of k tastes k - 1 averages),
    each kept in reserve at the price of an epoch's closing work, so the fit ends inside `seconds`."""

    def __init__(self, seconds: float, *, replayed: bool = False, closing_evals: int = 0) -> None:
        self.seconds = seconds
        self.replayed = replayed
        self.closing_evals = closing_evals
        self.step_s = self.tail_s = 0.0  # the last step's and the last epoch end's seconds: the look-ahead
        self.taken_s = 0.0  # seconds of the steps taken so far (the reserve of a replayed run)
        self.stopped_after: int | None = None

    def _over(self, trainer: Trainer) -> bool:
        spent = time.perf_counter() - trainer.started
        ahead = (self.step_s + self.tail_s) * (2 if self.replayed else 1)
        reserve = (self.taken_s if self.replayed else 0.0) + self.closing_evals * self.tail_s
        return trainer.engine.agree(spent + reserve + ahead > self.seconds)

    def after_step(self, trainer: Trainer) -> None:
        self.step_s = trainer.step_seconds
        self.taken_s += self.step_s
        if self._over(trainer):
            trainer.stop_epoch = True

    def after_epoch(self, trainer: Trainer) -> None:
        self.tail_s = time.perf_counter() - trainer.epoch_started - trainer.epoch_train_seconds
        if self._over(trainer):
            trainer.stop_fit = True
            self.stopped_after = trainer.pos.epoch

    def after_fit(self, trainer: Trainer) -> None:
        if self.stopped_after is not None:
            trainer.warnings.append(
                f"stopped after epoch {self.stopped_after}: time budget of {self.seconds:.0f} s spent"
            )


class StepLimit(Callback):
    """Stops after `steps` steps in all (a resumed fit counts those of its history): adapt's control
    replays exactly the steps the adaptation took."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.taken = 0

    def before_epoch(self, trainer: Trainer) -> None:
        self.taken = sum(r.get("steps", 0) for r in trainer.history if r["kind"] == "train")

    def after_step(self, trainer: Trainer) -> None:
        self.taken += 1
        if self.taken >= self.steps:  # stop_fit now: the epoch's checkpoint then says nothing is left
            trainer.stop_epoch = trainer.stop_fit = True


class Checkpoint(Callback):
    """An atomic checkpoint in `folder` after each phase start and epoch (main process only); with
    `resume`, training continues from the one there: model, optimizer with all its parameter groups,
    scheduler, position, best weights, history. It records the device type and precision that ran, and a
    resume goes on in them (`resumed_precision`)."""

    def __init__(self, folder: Path, resume: bool = False) -> None:
        self.folder = folder
        self.resume = resume
        # Read when the Trainer is built, so its engine is checked against it before any step.
        self._state = load_checkpoint(folder) if resume else None
        self._pending: dict[str, Any] | None = None  # a loaded checkpoint whose optimizer is still to restore

    def resumed_precision(self, engine: Engine) -> str | None:
        """The precision to resume in (None: nothing to resume); refuses another device type or precision."""
        if self._state is None:
            return None
        return resumed_precision(self._state.get("engine"), self.folder, engine.device.type, engine.asked)

    def before_fit(self, trainer: Trainer) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        if with_defaults(state["recipe"]) != trainer.recipe.to_dict():
            raise HeadstartError(
                f"the checkpoint in {self.folder} was written by another recipe",
                fix="resume with the same strategy and options, or drop --resume",
            )
        trainer.task.load_checkpoint_state(state)
        trainer.best = state["best"]
        trainer.history = list(state["history"])
        trainer.warnings = list(state["warnings"])
        trainer.pos = Position(**state["pos"])
        kept = state.get("callbacks", {})
        for cb in trainer.callbacks:
            if type(cb).__name__ in kept:
                cb.load_state_dict(kept[type(cb).__name__])
        self._pending = state

    def before_train(self, trainer: Trainer) -> None:
        state, self._pending = self._pending, None
        if (
            state is not None
            and state["optimizer"] is not None
            and state["pos"]["phase"] == trainer.pos.phase
            and trainer.pos.done_in_phase > 0
        ):
            trainer.opt.load_state_dict(state["optimizer"])
            trainer.sched.load_state_dict(state["scheduler"])

    def after_init(self, trainer: Trainer) -> None:
        self._save(trainer, asdict(trainer.pos), with_optimizer=False)

    def after_epoch(self, trainer: Trainer) -> None:
        pos = asdict(trainer.pos)
        if trainer.stop_phase or trainer.stop_fit:  # a resume goes on with the next phase
            pos["done_in_phase"] = trainer.phase.epochs
        self._save(trainer, pos, with_optimizer=True)

    def _save(self, trainer: Trainer, pos: dict[str, Any], *, with_optimizer: bool) -> None:
        if not trainer.engine.main:
            return
        state = {
            "pos": pos,
            **trainer.task.checkpoint_state(),
            "optimizer": trainer.opt.state_dict() if with_optimizer else None,
            "scheduler": trainer.sched.state_dict() if with_optimizer else None,
            "best": trainer.best,
            "history": trainer.history,
            "warnings": trainer.warnings,
            "recipe": trainer.recipe.to_dict(),
            "callbacks": {
                type(cb).__name__: st for cb in trainer.callbacks if (st := cb.state_dict()) is not None
            },
            "engine": engine_record(trainer.engine.device, trainer.engine.precision),
        }
        save_checkpoint(self.folder, state)


def with_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's recipe with the fields added since it was written at their defaults (no checks:
    continued pretraining's recipes are not classification's)."""
    from dataclasses import MISSING, fields

    from headstart.recipes import Phase, Recipe

    def filled(cls: type, d: dict[str, Any]) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING} | d

    out = filled(Recipe, recipe)
    out["phases"] = [filled(Phase, p) for p in recipe.get("phases", [])]
    return out
