"""The classifier's training loss: cross-entropy by default; distillation and domain-adversarial training
replace it (headstart.train.distill, headstart.train.dann)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from headstart.train.data import Split

if TYPE_CHECKING:
    from headstart.train.loop import Trainer


@dataclass
class Step:
    """What an Objective sees at one training step."""

    trainer: Trainer
    split: Split  # the training split the batch was drawn from
    logits: torch.Tensor
    features: torch.Tensor | None  # pooled embeddings, when the objective asked for them
    y: torch.Tensor  # class indices; -1 marks an unlabeled example
    idx: torch.Tensor  # positions of the batch in the training split
    start: int  # the group the batch entered at (0 = raw inputs)
    augment: bool
    generator: torch.Generator
    progress: float  # fraction of all training steps done, in [0, 1)
    class_weight: torch.Tensor | None = None  # per class, when the classes are skewed (headstart.imbalance)
    label_smoothing: float = 0.0  # the phase's
    mix: Mix | None = None  # a mixup batch: each input was mixed with input perm[i], weight lam on its own


class Objective:
    """The training loss. The default is cross-entropy on labeled examples; distillation and
    domain-adversarial training add terms, and may own extra trainable modules (trained at the head's rate).
    """

    needs_features = False
    # Forward passes per training item (SetFit's pair partners: 3); the CPU micro-batch budget counts them.
    passes = 1
    # Whether the untrained starting point (e.g. the linear probe of LP-FT) may be kept as the best epoch. An
    # objective whose gains do not show on the source validation split (domain adaptation) turns it off.
    start_is_candidate = True
    # Unlabeled inputs the objective learns from beyond the training split (DANN's target domain): the run
    # records them with the transfer-set items as metrics["unlabeled"].
    n_extra_unlabeled = 0

    def setup(self, trainer: Trainer, train: Split) -> None:
        """Called once before training (precompute targets, decode extra data)."""

    def modules(self) -> list[nn.Module]:
        return []

    def describe(self) -> dict[str, Any]:
        """What the run records of the objective (run.json and metrics.json)."""
        return {"name": "cross-entropy"}

    def loss(self, step: Step) -> torch.Tensor:
        return step_cross_entropy(step)


def step_cross_entropy(step: Step) -> torch.Tensor:
    """The step's cross-entropy: with its phase's label smoothing, and for a mixup batch both labels
    weighted as their inputs were (Zhang et al. 2018)."""
    ce = labeled_cross_entropy(step.logits, step.y, step.class_weight, step.label_smoothing)
    if step.mix is None:
        return ce
    other = step.y[step.mix.perm.to(step.y.device)]
    rest = labeled_cross_entropy(step.logits, other, step.class_weight, step.label_smoothing)
    return step.mix.lam * ce + (1.0 - step.mix.lam) * rest


@dataclass(frozen=True)
class Mix:
    perm: torch.Tensor
    lam: float


def mix_batch(h: torch.Tensor, alpha: float, gen: torch.Generator) -> tuple[torch.Tensor, Mix]:
    """Mixup of one batch: lam ~ Beta(alpha, alpha) (drawn from `gen`, so a seed repeats it), each input
    mixed with another of the batch."""
    import numpy as np

    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).beta(alpha, alpha))
    perm = torch.randperm(len(h), generator=gen)
    return lam * h + (1.0 - lam) * h[perm.to(h.device)], Mix(perm, lam)


def labeled_cross_entropy(
    z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy over the labeled examples of a batch (0 when it has none). With per-class `weight`
    (mean 1 per training item: headstart.imbalance), each item's loss times its class's weight, averaged
    over the labeled items: not over the batch's summed weight (PyTorch's `weight=`), which would undo the
    weighting in every batch that holds one class only, and rescale the step from batch to batch."""
    labeled = y >= 0
    if not bool(labeled.any()):
        return z.sum() * 0.0
    if weight is None:
        return F.cross_entropy(z.float(), y, ignore_index=-1, label_smoothing=smoothing)
    ce = F.cross_entropy(z.float(), y, ignore_index=-1, reduction="none", label_smoothing=smoothing)
    w = weight.to(ce.dtype)[y.clamp(min=0)] * labeled
    return (ce * w).sum() / labeled.sum()
