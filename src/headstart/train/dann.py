"""Domain-adversarial training (DANN; Ganin et al., JMLR 2016) as an Objective of the one training loop.

A small domain classifier looks at the pooled embeddings (the head's input) and learns to tell a labeled
source batch from an unlabeled target batch of the same size; a gradient-reversal layer in front of it
flips the sign of its gradient on the way back, so the trainable backbone groups learn features that
classify the source labels *and* that the domain classifier cannot separate. The reversal strength
follows Ganin's schedule lambda(p) = 2 / (1 + exp(-10 p)) - 1 over the phase (p: fraction of its steps),
so the still-random domain classifier cannot disturb the features early on.

Only trainable backbone groups can move the features: a recipe that trains no group (`head`) is refused,
and head-only phases of a mixed recipe train with plain cross-entropy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from headstart.errors import HeadstartError
from headstart.train.data import Split
from headstart.train.objective import Objective, Step, step_cross_entropy

if TYPE_CHECKING:
    from headstart.train.loop import Trainer

TARGET_SPLIT = "target"  # the Trainer caches frozen-prefix activations by split name


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -scale backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, scale)


def ganin_lambda(progress: float) -> float:
    """The reversal strength at `progress` in [0, 1]: 0 at the start, ~1 from the middle on."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainClassifier(nn.Module):
    """Embedding -> logit of "this came from the target domain" (one hidden layer, as in Ganin et al.)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(1)


class DomainAdversarial(Objective):
    """Source cross-entropy + weight x domain BCE, through a gradient reversed with strength lambda(p).

    `sources`: unlabeled inputs of the target (deployment) domain, decoded once in `setup`. Each training
    step draws a target batch of the source batch's size; it goes through the same frozen prefix (cached
    when the phase does not augment) and the same augmentation as the source batch, so the domain
    classifier cannot separate the domains by augmentation alone.
    """

    needs_features = True
    passes = 2  # each step also runs a target batch of the source batch's size: the micro-batch budget
    # The probe that starts LP-FT / partial:N never saw the target: keeping it because its *source*
    # validation accuracy is highest would throw the adaptation away.
    start_is_candidate = False

    def __init__(self, sources: list[str], weight: float = 1.0, hidden: int = 256) -> None:
        if weight < 0:
            raise HeadstartError(f"--domain-weight {weight}: must be >= 0", fix="use e.g. 0.1 .. 1")
        self.sources = list(sources)
        self.weight = float(weight)
        self.hidden = hidden
        self.target: Split | None = None
        self.skipped: dict[str, str] = {}
        self.classifier: DomainClassifier | None = None
        self._stats: dict[str, float] = {}

    def setup(self, trainer: Trainer, train: Split) -> None:
        from headstart.data.images import DEFAULT_MAX_PIXELS
        from headstart.train.data import check_all, streamed_split

        n_groups = len(trainer.backbone.groups)
        if not any(p.epochs > 0 and p.n_trainable(n_groups) > 0 for p in trainer.recipe.phases):
            raise HeadstartError(
                f"domain-adversarial training needs backbone groups that train, and strategy "
                f"{trainer.recipe.name!r} trains none (the features it would align stay frozen)",
                fix="use --strategy partial:2, lp-ft, full or gradual with --target-unlabeled",
            )
        if trainer.engine.world > 1:
            raise HeadstartError(
                "domain-adversarial training runs in a single process",
                fix="drop torchrun (or --nproc_per_node 1) when giving --target-unlabeled",
            )
        known = set(train.sources)
        sources = [s for s in dict.fromkeys(self.sources) if s not in known]
        max_pixels = getattr(train.examples, "max_pixels", DEFAULT_MAX_PIXELS)
        good, self.skipped = check_all(trainer.backbone, sources, max_pixels=max_pixels)
        kept = [s for s in sources if s in good]
        if not kept:
            raise HeadstartError(
                f"none of the {len(self.sources)} target inputs could be used "
                f"({len(self.skipped)} unreadable, {len(self.sources) - len(sources)} already labeled)",
                fix="point --target-unlabeled at inputs from the deployment domain",
            )
        self.target = streamed_split(
            trainer.backbone, kept, torch.full((len(kept),), -1, dtype=torch.long), max_pixels=max_pixels
        )
        self.n_extra_unlabeled = len(kept)
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the global stream untouched
            torch.manual_seed(trainer.seed)
            self.classifier = DomainClassifier(trainer.backbone.embed_dim, self.hidden)

    def modules(self) -> list[nn.Module]:
        return [self.classifier] if self.classifier is not None else []

    def describe(self) -> dict[str, Any]:
        return {
            "name": "domain-adversarial",
            "weight": self.weight,
            "n_target": len(self.target) if self.target is not None else 0,
            "skipped_target": len(self.skipped),
            "schedule": "lambda(p) = 2/(1+exp(-10p)) - 1, p = fraction of the phase's steps",
            "domain_classifier_hidden": self.hidden,
            **{k: round(v, 4) for k, v in self._stats.items()},
        }

    def loss(self, step: Step) -> torch.Tensor:
        ce = step_cross_entropy(step)
        trainer = step.trainer
        if (
            self.target is None
            or self.classifier is None
            or step.features is None
            or step.start >= len(trainer.backbone.groups)  # head-only: the features cannot move
        ):
            return ce
        self.classifier.train()
        n = len(step.idx)
        tidx = torch.randint(len(self.target), (n,), generator=step.generator)
        h, start = trainer.inputs(
            TARGET_SPLIT, self.target, tidx, step.start, augment=step.augment, gen=step.generator
        )
        with trainer.engine.autocast():
            f_target = trainer.net.features(h, start)
        feats = torch.cat([step.features, f_target.float()])
        lam = ganin_lambda(step.progress)
        d = self.classifier(reverse_gradient(feats, lam))
        is_target = torch.cat([torch.zeros(n), torch.ones(n)]).to(d.device)
        domain = F.binary_cross_entropy_with_logits(d, is_target)
        self._track(d.detach(), is_target, float(domain.detach()), lam)
        return ce + self.weight * domain

    def _track(self, d: torch.Tensor, is_target: torch.Tensor, loss: float, lam: float) -> None:
        """Running domain-classifier loss/accuracy (0.5 accuracy: the domains look alike)."""
        acc = float(((d > 0).float() == is_target).float().mean())
        beta = 0.9 if self._stats else 0.0
        old = self._stats
        self._stats = {
            "domain_loss": beta * old.get("domain_loss", loss) + (1 - beta) * loss,
            "domain_acc": beta * old.get("domain_acc", acc) + (1 - beta) * acc,
            "final_lambda": lam,
        }
