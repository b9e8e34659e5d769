"""SetFit (Tunstall et al. 2022) as an Objective of the one training loop: contrastive tuning of a sentence
encoder on pairs drawn from the training labels, then the closed-form probe head on the tuned embeddings.

The `setfit` recipe (headstart.recipes.built_in) says *what* trains: a `contrastive` phase over the
encoder's groups, then a `probe` phase (head only, no epochs) whose closed-form head is fitted on the tuned
encoder's embeddings, as `head_init: probe` does for LP-FT. Its `objective: contrastive` says *how* the
training phase learns: `_objective` in headstart.train.api builds `ContrastivePairs` from it, so a recipe
file can ask for the same loss.

Each training item of a batch is an anchor that gets one positive partner (another item of its class) and
one negative partner (an item of another class), drawn uniformly from the labeled training items with the
epoch's seeded generator: the pairs are balanced, and an epoch is SetFit's "iteration" (2 pairs per item),
so E epochs give 2E pairs per item. The loss is SetFit's CosineSimilarityLoss: the mean squared error
between cos(u, v) of the pooled embeddings and 1 (same class) or 0. Meanwhile the head learns by
cross-entropy on *detached* embeddings, so the epochs' validation rows mean something; it cannot move the
encoder, and the probe phase replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from headstart.errors import HeadstartError
from headstart.train.data import Split
from headstart.train.objective import Objective, Step, labeled_cross_entropy

if TYPE_CHECKING:
    from headstart.train.loop import Trainer

CONTRASTIVE = "contrastive"  # the recipe's `objective` that selects this loss


def refuse_unusable(modality: str, backbone: str, labels: Sequence[int], classes: Sequence[str]) -> None:
    """Contrastive pairs need a text encoder, two classes (a negative pair) and, for every class, two
    training items (a positive pair). `labels`: class indices into `classes`, -1 for unlabeled items."""
    if modality != "text":
        raise HeadstartError(
            f"the setfit strategy tunes a sentence encoder; {backbone} is a backbone for {modality}",
            fix="use a text backbone (e.g. --backbone minilm-l6), or --strategy lp-ft / partial:2 for "
            f"{modality} data",
        )
    counts = [0] * len(classes)
    for y in labels:
        if y >= 0:
            counts[y] += 1
    if len(classes) < 2:
        raise HeadstartError(
            f"the setfit strategy needs two classes (a negative pair); the data has {list(classes)}",
            fix="add examples of another class",
        )
    short = [c for c, n in zip(classes, counts, strict=True) if n < 2]
    if short:
        raise HeadstartError(
            f"the setfit strategy needs two training items of every class (a positive pair); "
            f"{sorted(short)} have fewer",
            fix="add training examples of those classes, lower --val/--test, or use --strategy head",
        )


class PairSampler:
    """Partners for anchors among the labeled items of `y` (-1: unlabeled, never drawn)."""

    def __init__(self, y: torch.Tensor, n_classes: int) -> None:
        y = self.y = y.long().cpu()
        labeled = torch.nonzero(y >= 0).squeeze(1)
        self.order = labeled[torch.argsort(y[labeled], stable=True)]  # labeled items grouped by class
        self.count = torch.bincount(y[labeled], minlength=n_classes)
        self.start = torch.cumsum(self.count, 0) - self.count
        self.rank = torch.full((len(y),), -1, dtype=torch.long)  # an item's place within its class
        self.rank[self.order] = torch.arange(len(self.order)) - self.start[y[self.order]]

    def partners(self, anchors: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) partner of each anchor: uniform over the *other* items of its class, and
        over the items of every other class."""
        c = self.y[anchors]
        n_c, s_c = self.count[c], self.start[c]
        u = torch.rand(len(anchors), 2, generator=gen)
        r = (u[:, 0] * (n_c - 1)).long().clamp(max=n_c - 2)  # a slot among the n_c - 1 others
        r = r + (r >= self.rank[anchors]).long()  # skip the anchor's own slot
        pos = self.order[s_c + r]
        n_other = len(self.order) - n_c
        r = (u[:, 1] * n_other).long().clamp(max=n_other - 1)
        neg = self.order[torch.where(r < s_c, r, r + n_c)]  # the class's block skipped
        return pos, neg


def cosine_pair_loss(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss: mean of (cos(u_i, v_i) - target_i)^2."""
    return F.mse_loss(F.cosine_similarity(u.float(), v.float(), dim=1), target.float())


class ContrastivePairs(Objective):
    """Cosine-similarity loss on balanced positive/negative pairs of training items (see the module)."""

    needs_features = True
    passes = 3  # anchors, positive and negative partners: three forwards per training item

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.sampler: PairSampler | None = None
        self._stats: dict[str, float] = {}

    def setup(self, trainer: Trainer, train: Split) -> None:
        bb = trainer.backbone
        # Checked again on the split that was decoded: unreadable items are gone from it.
        refuse_unusable(bb.modality, bb.name, train.y.tolist(), self.classes)
        if trainer.engine.world > 1:  # partners run outside the wrapped model, as DANN's target batch does
            raise HeadstartError(
                "the setfit strategy trains in a single process", fix="drop torchrun (or --nproc_per_node 1)"
            )
        self.sampler = PairSampler(train.y, len(self.classes))

    def describe(self) -> dict[str, Any]:
        return {
            "name": "setfit-contrastive",
            "loss": "mean (cos(u, v) - [same class])^2 on pooled embeddings; head: cross-entropy, detached",
            "pairs_per_item_per_epoch": 2,
            **{k: round(v, 4) for k, v in self._stats.items()},
        }

    def loss(self, step: Step) -> torch.Tensor:
        assert self.sampler is not None and step.features is not None
        trainer = step.trainer
        head_ce = labeled_cross_entropy(trainer.head(step.features.detach()), step.y, step.class_weight)
        anchors = step.idx[step.y.cpu() >= 0]
        if step.start >= len(trainer.backbone.groups) or not len(anchors):  # nothing that moves the features
            return head_ce
        pos, neg = self.sampler.partners(anchors, step.generator)
        h, start = trainer.inputs(
            "train", step.split, torch.cat([pos, neg]), step.start, augment=step.augment, gen=step.generator
        )
        with trainer.engine.autocast():
            partners = trainer.net.features(h, start).float()
        f = step.features[step.y >= 0]
        target = torch.cat([torch.ones(len(anchors)), torch.zeros(len(anchors))]).to(f.device)
        pair = cosine_pair_loss(torch.cat([f, f]), partners, target)
        self._stats["pair_loss"] = float(pair.detach())
        return pair + head_ce
