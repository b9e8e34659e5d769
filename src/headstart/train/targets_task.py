"""Fine-tuning toward targets other than one class per item, in the one training loop: multi-label (K
outputs, binary cross-entropy with logits per label) and regression (one output, Huber or MSE on the
target standardised by the training split's mean and standard deviation).

`TargetsTask` is `Classification` (layer groups, frozen BatchNorm, the frozen-prefix cache, recipes,
LoRA, checkpoints and resume) with its target hooks replaced: the Split's `y` holds float targets (N, K) or
(N,), the loss is a `TargetLoss` Objective, the head LP-FT starts from is the shape's own probe
(`probe_init`: headstart.shapes.linear_fit passes the shape's `fit_head`), and an epoch is judged on val
mAP (multi-label) or val RMSE in target units (regression); the training line shows losses and those
scores, never an accuracy of float targets.

Why Huber with delta 1 on the *standardised* target: one delta then fits every target scale (a price in
euros, an angle), and at one standard deviation it is quadratic for ordinary residuals and linear for
outliers, so a few mislabeled items do not dominate the gradient (MSE: `loss="mse"`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from headstart.train.classify import Classification
from headstart.train.data import Split
from headstart.train.objective import Objective, Step

if TYPE_CHECKING:
    from headstart.backbones.base import Backbone
    from headstart.train.loop import Trainer
    from headstart.train.task import StepTotals

MULTILABEL, REGRESS = "multilabel", "regress"
#: Regression losses (--loss), the default first.
LOSSES = ("huber", "mse")
HUBER_DELTA = 1.0  # in standard deviations of the training target

#: (pristine train embeddings, pristine val embeddings) -> (weight, bias) in the space the task trains in
#: (regression: the standardised target), and the probe's read-out state (kept through checkpoints).
ProbeInit = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, dict[str, Any]]]


def target_loss(kind: str, loss: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean loss of outputs `z` (N, K) against float targets `y` ((N, K) 0/1, or (N,) standardised)."""
    z = z.float()
    if kind == MULTILABEL:
        return F.binary_cross_entropy_with_logits(z, y.float())
    v = z[:, 0]
    if loss == "mse":
        return F.mse_loss(v, y.float())
    return F.huber_loss(v, y.float(), delta=HUBER_DELTA)


class TargetLoss(Objective):
    """The training loss of a TargetsTask (every item has a target: there are no unlabeled ones)."""

    def __init__(self, kind: str, loss: str = LOSSES[0]) -> None:
        self.kind, self.name = kind, "bce-with-logits" if kind == MULTILABEL else loss

    def describe(self) -> dict[str, Any]:
        if self.kind == MULTILABEL:
            return {"name": self.name, "per": "label"}
        extra = {"delta": HUBER_DELTA} if self.name == "huber" else {}
        return {"name": self.name, **extra, "on": "the target standardised by train's mean and sd"}

    def loss(self, step: Step) -> torch.Tensor:
        return target_loss(self.kind, self.name, step.logits, step.y)


class TargetsTask(Classification):
    """Classification's loop over float targets (see the module). `scale`: the training target's standard
    deviation (regression), so val RMSE and MAE read in target units."""

    def __init__(
        self,
        backbone: Backbone,
        n_outputs: int,
        *,
        kind: str,
        probe_init: ProbeInit,
        loss: str = LOSSES[0],
        scale: float = 1.0,
        **options: Any,
    ) -> None:
        if options.get("objective") is not None:
            raise ValueError("a TargetsTask brings its own loss")
        options = {**options, "objective": TargetLoss(kind, loss), "imbalance": None}
        super().__init__(backbone, n_outputs, **options)
        self.kind, self.probe_init, self.scale = kind, probe_init, scale
        self.score_key = "val_map" if kind == MULTILABEL else "val_rmse"
        self.readout_state: dict[str, Any] = {}  # the probe's read-out (thresholds, target mean, ...)

    @property
    def score_columns(self) -> tuple[str, ...]:
        """The history's score columns (history.csv)."""
        extra = ("val_map",) if self.kind == MULTILABEL else ("val_rmse", "val_mae")
        return ("train_loss", "val_loss", *extra)

    # -- the target hooks of Classification ---------------------------------------------------------------
    def probe_head(self, train: Split, val: Split) -> tuple[np.ndarray, np.ndarray]:
        E = self.states("train", train, self.n_groups).cpu().numpy()
        Ev = self.states("val", val, self.n_groups).cpu().numpy() if len(val) else E[:0]
        weight, bias, self.readout_state = self.probe_init(E, Ev)
        return np.asarray(weight, np.float32), np.asarray(bias, np.float32)

    def labeled_logits(
        self, name: str, split: Split, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits(name, split, k), split.y  # every item has a target

    def train_counts(self, z: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        return 0, 0  # no accuracy of float targets: the epoch line shows losses and val scores

    # -- judging an epoch ---------------------------------------------------------------------------------
    def scores(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """(loss and the score that judges epochs) of outputs `z` against targets `y`."""
        if not len(y):
            nan = float("nan")
            return (
                {"loss": nan, "map": nan}
                if self.kind == MULTILABEL
                else {"loss": nan, "rmse": nan, "mae": nan}
            )
        loss = float(target_loss(self.kind, self.objective.name, z, y))
        if self.kind == MULTILABEL:
            from headstart.shapes.multilabel_fit import mean_ap

            return {"loss": loss, "map": mean_ap(z.numpy(), y.numpy())}
        err = (z[:, 0] - y).double() * self.scale
        return {"loss": loss, "rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}

    def evaluate(self, trainer: Trainer, totals: StepTotals | None) -> dict[str, float]:
        assert self.train is not None and self.val is not None
        val = self.scores(*self.labeled_logits("val", self.val))
        if totals is None:
            tl = self.scores(*self.labeled_logits("train", self.train))["loss"]
        else:
            tl = totals.total / max(1, totals.count)
        row = {"train_loss": tl, "val_loss": val["loss"]}
        return {**row, **{f"val_{k}": v for k, v in val.items() if k != "loss"}}

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        judged = metrics[self.score_key]
        if math.isnan(judged):  # no validation split (or no val positive): the lowest training loss
            tl = metrics["train_loss"]
            return (0.0, -tl if not math.isnan(tl) else -math.inf)
        return (judged if self.kind == MULTILABEL else -judged, -metrics["val_loss"])

    def describe_metrics(self, row: dict[str, Any]) -> str:
        head = f"train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f}"
        if self.kind == MULTILABEL:
            return f"{head} mAP {row['val_map']:.3f}"
        return f"{head} RMSE {row['val_rmse']:.4g} MAE {row['val_mae']:.4g}"

    # -- state: the probe's read-out goes with the weights, so a resumed run re-tunes from it -------------
    def checkpoint_state(self) -> dict[str, Any]:
        from headstart.runs import to_jsonable

        # As JSON text: checkpoints load with weights_only=True, which refuses NumPy scalars.
        return {**super().checkpoint_state(), "readout_state": json.dumps(to_jsonable(self.readout_state))}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        self.readout_state = json.loads(state.get("readout_state") or "{}")
