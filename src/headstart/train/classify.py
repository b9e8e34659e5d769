"""The classification task of the one training loop: a backbone's layer groups and a linear head.

Per phase the top `n` groups train and the rest are frozen *in eval mode* (BatchNorm running statistics
never move in frozen groups); the optimizer gets one parameter group per trainable layer group with the
recipe's discriminative rates; the epoch is judged on validation accuracy (val loss breaks ties). The loss is
an Objective (cross-entropy, with the phase's label smoothing and mixup; distillation; domain-adversarial).
Skewed classes (headstart.imbalance): inverse-frequency class weights, epochs judged on balanced accuracy.

Frozen-prefix caching: when a phase does not augment, the activations entering the first trainable group
are computed once per phase and each epoch runs only the top groups (head-only phases read the pooled
embeddings from the on-disk feature cache). Validation always runs from cached activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.backbones.base import Backbone
from headstart.imbalance import ACCURACY, Imbalance, balanced_accuracy
from headstart.recipes import Phase
from headstart.train import groups
from headstart.train.activations import FrozenPrefix, take
from headstart.train.data import Split
from headstart.train.engine import Engine
from headstart.train.groups import Net, first_trainable_group, param_groups, set_trainable
from headstart.train.micro_batch import GHOST_BATCH, micro_batch_size, saved_bytes
from headstart.train.objective import Objective, Step, mix_batch
from headstart.train.precision import side_effect_free, time_step
from headstart.train.task import StepOut, StepTotals, Task

if TYPE_CHECKING:
    from headstart.train.loop import Trainer


class Classification(FrozenPrefix, Task):
    """Runs a Recipe's phases on (train, val) Splits. `embed_pristine(split_name)` returns cached pooled
    embeddings of the untouched pretrained backbone (the feature cache), used while no group has trained."""

    def __init__(
        self,
        backbone: Backbone,
        n_classes: int,
        *,
        pretrained: bool = True,
        seed: int = 0,
        prefix_cache: bool = True,
        augment: bool | None = None,
        embed_pristine: Callable[[str], np.ndarray] | None = None,
        eval_batch_size: int | None = None,
        objective: Objective | None = None,
        engine: Engine | None = None,
        imbalance: Imbalance | None = None,
    ) -> None:
        self.backbone = backbone
        self.imbalance = imbalance
        self.metric = imbalance.metric if imbalance is not None else ACCURACY
        w = imbalance.class_weight() if imbalance is not None else None
        self.class_weight = None if w is None else torch.tensor(w, dtype=torch.float32)
        self.score_key = "val_acc" if self.metric == ACCURACY else "val_bal_acc"  # what judges an epoch
        self.pretrained = pretrained
        self.seed = seed
        self.prefix_cache = prefix_cache
        self.augment = augment
        self.embed_pristine = embed_pristine if pretrained else None
        self.engine = engine or Engine(torch.device("cpu"))
        # Evaluation forwards keep no activations, but a batch's largest layer is alive at once: on a CPU
        # (whose RAM is the process's) 16 Lite0 images at 224 px added ~150 MB to the peak against ~720 MB
        # for 64, and ran faster (59 vs 41 img/s, 2-core Xeon); GPUs take larger batches.
        self.eval_batch_size = eval_batch_size or (16 if self.engine.device.type == "cpu" else 64)
        self.objective = objective or Objective()
        self.head = nn.Linear(backbone.embed_dim, n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.net = self.model = Net(backbone, self.head)
        if backbone.modality == "image":
            self.net.to(memory_format=torch.channels_last)
        self.n_groups = len(backbone.groups)
        self.trained_groups: set[int] = set()
        self.pristine = pretrained
        self._k = self.n_groups  # the lowest group that trains in the current phase (n_groups outside)
        self._n = 0  # groups trained in the current phase
        self._augment_now = False
        self._phase = Phase("none")  # the current phase: its label smoothing and mixup (checked: train.api)
        self._states: dict[tuple[str, int], Any] = {}
        self._onnx_prefixes: dict[int, Any] = {}
        self.train: Split | None = None
        self.val: Split | None = None
        self._item_bytes: dict[tuple[int, bool], float] = {}  # activation bytes per item, per (k, augment)

    @property
    def start_is_candidate(self) -> bool:  # type: ignore[override]
        return self.objective.start_is_candidate

    def modules(self) -> list[nn.Module]:
        return [self.net, *self.objective.modules()]

    def setup(self, trainer: Trainer, train: Split, val: Split) -> None:
        self.train, self.val = train, val
        self.objective.setup(trainer, train)

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, name: str, split: Split, k: int | None = None) -> torch.Tensor:
        """Logits (on the CPU) for a whole split in eval mode, from cached activations at the lowest frozen
        boundary."""
        k = self._k if k is None else k
        self.net.eval()
        cached = self.states(name, split, k) if len(split) else None
        out = []
        for b in range(0, len(split), self.eval_batch_size):
            idx = torch.arange(b, min(b + self.eval_batch_size, len(split)))
            if cached is not None:
                z = self.net(take(cached, idx), k)
            else:
                z = self.net(self.engine.place(self._collate(split, idx.tolist())), 0)
            out.append(z.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.head.out_features)

    def labeled_logits(
        self, name: str, split: Split, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of the split's labeled items: unlabeled inputs (y = -1) have nothing to score."""
        z = self.logits(name, split, k)
        labeled = split.y >= 0
        return z[labeled], split.y[labeled]

    def _metrics(self, name: str, split: Split) -> tuple[float, float, float]:
        """(loss, accuracy, balanced accuracy) of the split's labeled items."""
        z, y = self.labeled_logits(name, split)
        if not len(y):
            return float("nan"), float("nan"), float("nan")
        loss = float(F.cross_entropy(z, y))
        pred = z.argmax(1)
        acc = float((pred == y).float().mean())
        return loss, acc, balanced_accuracy(y.numpy(), pred.numpy())

    def evaluate(self, trainer: Trainer, totals: StepTotals | None) -> dict[str, float]:
        assert self.train is not None and self.val is not None
        vl, va, vb = self._metrics("val", self.val)
        if totals is None:
            tl, ta, _ = self._metrics("train", self.train)
        else:
            tl, ta = totals.total / max(1, totals.count), totals.correct / max(1, totals.labeled)
        row = {"train_loss": tl, "train_acc": ta, "val_loss": vl, "val_acc": va}
        return row if self.score_key == "val_acc" else {**row, self.score_key: vb}

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        if math.isnan(metrics[self.score_key]):  # no validation split: the best is the lowest training loss
            tl = metrics["train_loss"]
            return (0.0, -tl if not math.isnan(tl) else -math.inf)
        return (metrics[self.score_key], -metrics["val_loss"])

    def describe_metrics(self, row: dict[str, Any]) -> str:
        bal = f" bal acc {row['val_bal_acc']:.3f}" if "val_bal_acc" in row else ""
        return (
            f"train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | val loss {row['val_loss']:.3f} "
            f"acc {row['val_acc']:.3f}{bal}"
        )

    # -- phases -------------------------------------------------------------------------------------------
    def _freeze_bn(self, phase: Phase) -> bool:
        return (phase.batchnorm or ("frozen" if self.pretrained else "batch")) == "frozen"

    def _set_modes(self, phase: Phase) -> bool:
        """The phase's trainable groups, BatchNorm mode and stochastic depth (train.groups.set_trainable);
        whether the backbone has stochastic depth."""
        bn = self._freeze_bn(phase)
        return set_trainable(
            self.backbone, self.head, self._n, freeze_batchnorm=bn, drop_path=phase.drop_path
        )

    def begin_phase(self, trainer: Trainer, phase: Phase) -> None:
        self._n = phase.n_trainable(self.n_groups)
        has_drop_path = self._set_modes(phase)
        self._k = first_trainable_group(self.backbone, self._n)
        if phase.drop_path is not None and not has_drop_path:
            trainer.warnings.append(
                f"phase {phase.name!r}: drop_path ignored: {self.backbone.name} has no stochastic depth"
            )

    def init_phase(self, trainer: Trainer, phase: Phase) -> bool:
        assert self.train is not None and self.val is not None
        train, val = self.train, self.val
        if phase.head_init == "zeros":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        elif phase.head_init == "probe":
            weight, bias = self.probe_head(train, val)
            with torch.no_grad():
                self.head.weight.copy_(torch.from_numpy(weight))
                self.head.bias.copy_(torch.from_numpy(bias))
        # A zero head predicts one class: nothing to learn from evaluating it (from scratch: a full pass).
        return phase.head_init == "probe" or (phase.head_init == "keep" and phase.epochs == 0)

    def probe_head(self, train: Split, val: Split) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) of the probe on pristine embeddings: LP-FT's start (see train.targets_task)."""
        from headstart.head import fit_head

        labeled = (train.y >= 0).numpy()  # unlabeled examples (distillation) have y == -1
        E = self.states("train", train, self.n_groups).cpu().numpy()[labeled]
        Ev = self.states("val", val, self.n_groups).cpu().numpy() if len(val) else None
        y, yv = train.y.numpy()[labeled], (val.y.numpy() if len(val) else None)
        k, w = self.head.out_features, None if self.class_weight is None else self.class_weight.numpy()
        lin = fit_head(E, y, k, X_val=Ev, y_val=yv, seed=self.seed, class_weight=w, metric=self.metric)[0]
        return lin.weight, lin.bias

    def prepare_phase(self, trainer: Trainer, phase: Phase) -> None:
        self._phase = phase
        augment = self.augment if self.augment is not None else phase.uses_augment(self.n_groups)
        self._augment_now = augment and self.backbone.modality == "image"
        if not self._augment_now and self.prefix_cache:
            assert self.train is not None
            self.states("train", self.train, self._k)  # computed once per phase, before epoch 1's clock

    def param_groups(self, phase: Phase) -> list[dict[str, Any]]:
        groups = param_groups(self.backbone, self.head, phase)
        extra = [p for m in self.objective.modules() for p in m.parameters()]
        if extra:
            groups.append({"name": "objective", "params": extra, "lr": phase.lr, "weight_decay": 0.0})
        return groups

    def n_items(self) -> int:
        assert self.train is not None
        return len(self.train)

    def epoch_order(self, seed: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n_items(), generator=gen)

    def begin_epoch(self, trainer: Trainer, phase: Phase) -> None:
        self._set_modes(phase)

    def micro_batch(self, trainer: Trainer, n: int) -> int:
        return n if self._n == 0 else self._micro(trainer.phase, self._k, n)

    def _micro(self, phase: Phase, k: int, n: int) -> int:
        """On a CPU, as many items per micro-batch as the activation budget holds (train.micro_batch) when
        the groups from k train; where BatchNorm learns batch statistics there, never fewer than
        GHOST_BATCH items (its batch)."""
        if self.engine.device.type != "cpu" or n <= 1:
            return n
        bn = (m for g in self.backbone.groups[k:] for m in g.modules())
        batch_stats = not self._freeze_bn(phase) and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in bn
        )
        key = (k, self._augment_now)
        if key not in self._item_bytes:
            self._item_bytes[key] = self._activation_bytes_per_item(k) * self.objective.passes
        return micro_batch_size(self._item_bytes[key], n, floor=GHOST_BATCH if batch_stats else 1)

    def _activation_bytes_per_item(self, k: int) -> float:
        """What autograd saves per training item entering group k (measured on two items)."""
        assert self.train is not None
        m = min(2, len(self.train))
        gen = torch.Generator().manual_seed(0)
        h, start = self.inputs("train", self.train, torch.arange(m), k, augment=False, gen=gen)

        def forward() -> torch.Tensor:
            with self.engine.autocast():
                return self.net(h, start)

        return saved_bytes(forward, self.net.parameters()) / max(1, m)

    def prefetch(self, batch: torch.Tensor) -> None:
        assert self.train is not None
        decodes = self._augment_now or not self.prefix_cache or self._states.get(("train", self._k)) is None
        if decodes and len(batch):
            self.train.prefetch(batch.tolist())

    def step(
        self, trainer: Trainer, model: nn.Module, batch: torch.Tensor, gen: torch.Generator, progress: float
    ) -> StepOut:
        assert self.train is not None
        y = self.engine.place(self.train.y[batch])
        h, start = self.inputs("train", self.train, batch, self._k, augment=self._augment_now, gen=gen)
        h, mix = mix_batch(h, self._phase.mixup, gen) if self._phase.mixup else (h, None)
        needs = self.objective.needs_features
        with self.engine.autocast():
            out = model(h, start, needs)
        z, f = out if needs else (out, None)
        step = Step(
            trainer=trainer,
            split=self.train,
            logits=z.float(),
            features=f.float() if f is not None else None,
            y=y,
            idx=batch,
            start=start,
            augment=self._augment_now,
            generator=gen,
            progress=progress,
            class_weight=None if self.class_weight is None else self.engine.place(self.class_weight),
            label_smoothing=self._phase.label_smoothing,
            mix=mix,
        )
        loss = self.objective.loss(step)
        return StepOut(loss, float(loss.detach()) * len(batch), len(batch), *self.train_counts(z, y))

    def train_counts(self, z: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(correct, labeled) of a training batch: what the epoch's training accuracy sums."""
        labeled = y >= 0
        return int((z.argmax(1) == y)[labeled].sum()), int(labeled.sum())

    def end_epoch(self, trainer: Trainer, phase: Phase) -> None:
        if self._n > 0:
            self.trained_groups.update(range(self._k, self.n_groups))
            self.pristine = False
            self._forget_states(self._k)

    # -- precise BatchNorm (headstart.train.callbacks.PreciseBatchNorm) ----------------------------------
    def trained_batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        if self._n == 0:
            return []
        return [
            m
            for g in self.backbone.groups[self._k :]
            for m in g.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]

    @torch.no_grad()
    def forward_training_set(self, trainer: Trainer) -> None:
        """The unaugmented training set through the trained groups, in training mode (BatchNorm counts)."""
        assert self.train is not None
        k, train = self._k, self.train
        cached = None if self._augment_now else self._states.get(("train", k))
        bs = trainer.recipe.batch_size
        for b in range(0, len(train), bs):
            idx = torch.arange(b, min(b + bs, len(train)))
            if cached is not None:
                h = take(cached, idx)
            else:
                h = self._prefix(self._collate(train, idx.tolist()), k)
            self.backbone.forward_groups(h, k)

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)  # e.g. the best weights: cached states that ran the others are stale
        self._forget_states(min(self.trained_groups, default=self.n_groups))

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "trained_groups": sorted(self.trained_groups),
            "objective": [m.state_dict() for m in self.objective.modules()],
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        for m, st in zip(self.objective.modules(), state.get("objective", []), strict=False):
            m.load_state_dict(st)
        self.trained_groups = set(state["trained_groups"])
        self.pristine = self.pretrained and not self.trained_groups

    # -- precision ----------------------------------------------------------------------------------------
    def timing(self, trainer: Trainer) -> tuple[str, Callable[[str], float]] | None:
        """One step of the phase that trains the most groups, from raw inputs through its frozen prefix."""
        phases = [p for p in trainer.recipe.phases if p.epochs > 0]
        if not phases or self.train is None or not len(self.train):
            return None
        phase = max(phases, key=lambda p: p.n_trainable(self.n_groups))
        n = phase.n_trainable(self.n_groups)
        if n == 0:
            return None  # the head alone on cached embeddings: too small to gain from bf16
        bs = min(len(self.train), max(1, trainer.recipe.batch_size // trainer.engine.world))
        key = f"{self.backbone.key}|{n} of {self.n_groups} groups|batch {bs}"

        def timer(precision: str) -> float:
            modules = self.modules()
            with side_effect_free(modules):
                # groups.set_trainable: the timed step's own setting, not one of the recipe's phases
                groups.set_trainable(self.backbone, self.head, n, freeze_batchnorm=self._freeze_bn(phase))
                k = first_trainable_group(self.backbone, n)
                x = self._collate(self.train, range(self._micro(phase, k, bs)))  # the step's micro-batch
                h = self._prefix(x, k) if k > 0 else self.engine.place(x)
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32

                def once() -> None:
                    with torch.autocast(self.engine.device.type, dtype=dtype, enabled=precision != "fp32"):
                        z = self.net(h, k)
                    z.float().logsumexp(1).mean().backward()

                return time_step(once)

        return key, timer

    def end_fit(self, trainer: Trainer) -> None:
        self._warn_if_start_was_better(trainer)
        self._k = self.n_groups
        self.backbone.eval()
        self.net.eval()

    def _warn_if_start_was_better(self, trainer: Trainer) -> None:
        """When the starting point could not be kept (see Objective.start_is_candidate), say so if it scored
        higher on validation than what training returns."""
        best = trainer.best
        if self.objective.start_is_candidate or best["score"] is None:
            return
        key = self.score_key
        starts = [r[key] for r in trainer.history if r["kind"] == "init" and not math.isnan(r[key])]
        if starts and max(starts) > best["score"][0]:
            trainer.warnings.append(
                f"the starting point scored higher on validation ({max(starts):.3f}) than the trained model "
                f"({best['score'][0]:.3f}); {self.objective.describe()['name']} optimises for data the "
                "validation split does not hold, so judge it on labeled data of that domain "
                "(`headstart evaluate RUN DATA`)"
            )
