"""The one training loop: runs any Recipe's phases over a backbone's layer groups and a linear head.

Per phase: the top `n` groups train and the rest are frozen *in eval mode* (BatchNorm running statistics
never move in frozen groups); the optimizer gets one parameter group per trainable layer group with the
recipe's discriminative rates; the schedule is warm-up + cosine (or one-cycle); early stopping watches the
validation accuracy (val loss breaks ties) and the best weights are restored at the end.

Frozen-prefix caching: when a phase does not augment, the activations entering the first trainable group
are computed once per phase and each epoch runs only the top groups (head-only phases read the pooled
embeddings from the on-disk feature cache). Validation always runs from cached activations.

Data-parallel when launched under `torchrun` (gloo on CPU, NCCL on GPU) through torch.distributed's DDP.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.backbones.base import Backbone
from headstart.recipes import Phase, Recipe
from headstart.train.augment import augment_images
from headstart.train.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

# Fault injection for the resume test: the process kills itself right after checkpointing this epoch.
CRASH_ENV = "HEADSTART_CRASH_AFTER_EPOCH"
GAP_WARNING = 0.2  # train-val accuracy gap that, once widening, is worth a warning


@dataclass
class Split:
    """Decoded examples of one split (what `backbone.load_item` returned) and their class indices."""

    examples: list[Any]
    y: torch.Tensor
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


class Net(nn.Module):
    """backbone + head, entered at any group: `forward(h, start)` runs groups[start:], pool and head.

    `h` is the input batch when start == 0, cached activations otherwise, and pooled embeddings when
    start == len(groups).
    """

    def __init__(self, backbone: Backbone, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, h: Any, start: int = 0) -> torch.Tensor:
        """Pooled embeddings (the head's input)."""
        if start >= len(self.backbone.groups):
            return h
        return self.backbone.pool(self.backbone.forward_groups(h, start))

    def forward(self, h: Any, start: int = 0, with_features: bool = False) -> Any:
        f = self.features(h, start)
        z = self.head(f)
        return (z, f) if with_features else z


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


class Objective:
    """The training loss. The default is cross-entropy on labeled examples; distillation and
    domain-adversarial training add terms, and may own extra trainable modules (trained at the head's rate).
    """

    needs_features = False
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
        return labeled_cross_entropy(step.logits, step.y)


def labeled_cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled examples of a batch (0 when it has none)."""
    if bool((y >= 0).any()):
        return F.cross_entropy(z.float(), y, ignore_index=-1)
    return z.sum() * 0.0


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> _Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size())


def _lr_lambda(phase: Phase, total: int) -> Callable[[int], float]:
    warm = max(1, round(phase.warmup * total)) if phase.schedule != "constant" else 0
    if phase.schedule == "onecycle":
        warm = max(1, round(0.3 * total))

    def f(step: int) -> float:
        if phase.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        floor = 0.01 if phase.schedule == "cosine" else 0.001
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def param_groups(backbone: Backbone, head: nn.Linear, phase: Phase) -> list[dict[str, Any]]:
    """One optimizer group per trainable layer group (and the head), rates as the recipe says.

    Group at depth d below the top gets lr x backbone_lr_ratio x lr_decay^d. Biases and norm weights (1-D
    tensors) get no weight decay, split into their own groups.
    """
    groups: list[dict[str, Any]] = []
    n_groups = len(backbone.groups)
    n = phase.n_trainable(n_groups)

    def add(name: str, params: list[nn.Parameter], lr: float) -> None:
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        flat = [p for p in params if p.ndim <= 1]
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": phase.weight_decay})
        if flat:
            groups.append({"name": f"{name}.no_decay", "params": flat, "lr": lr, "weight_decay": 0.0})

    add("classifier", list(head.parameters()), phase.lr)
    for depth in range(n):
        i = n_groups - 1 - depth
        lr = phase.lr * phase.backbone_lr_ratio * phase.lr_decay**depth
        params = list(backbone.groups[i].parameters())
        if depth == 0:
            params += list(backbone.pool.parameters())  # a pooling norm trains with the top group
        add(backbone.group_names[i], params, lr)
    return groups


def set_trainable(
    backbone: Backbone, head: nn.Linear, n_trainable: int, *, freeze_batchnorm: bool = False
) -> None:
    """requires_grad and train/eval mode per group: frozen groups stay in eval mode (BatchNorm frozen).

    `freeze_batchnorm`: BatchNorm layers of trained groups also stay in eval mode (running statistics
    used and kept; their affine parameters still train)."""
    n_groups = len(backbone.groups)
    first = n_groups - n_trainable
    backbone.eval()
    for i, g in enumerate(backbone.groups):
        trainable = i >= first
        g.requires_grad_(trainable)
        g.train(trainable)
    backbone.pool.requires_grad_(n_trainable > 0)
    backbone.pool.train(n_trainable > 0)
    keep = backbone.trainable_filter
    if keep is not None:
        for name, p in backbone.named_parameters():
            if p.requires_grad and not keep(name):
                p.requires_grad_(False)
        for g in backbone.groups:  # a group left with nothing to train runs as frozen (dropout off)
            if not any(p.requires_grad for p in g.parameters()):
                g.train(False)
    if freeze_batchnorm:
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    head.requires_grad_(True)
    head.train()


def first_trainable_group(backbone: Backbone, n_trainable: int) -> int:
    """Index of the lowest group with a parameter that trains: everything below it can be cached."""
    n_groups = len(backbone.groups)
    for i in range(n_groups - n_trainable, n_groups):
        if any(p.requires_grad for p in backbone.groups[i].parameters()):
            return i
    return n_groups


def _channels_last(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _index(states: Any, idx: torch.Tensor) -> Any:
    if isinstance(states, dict):
        return {k: v[idx] for k, v in states.items()}
    return states[idx]


class Trainer:
    """Runs a Recipe on (train, val) Splits. `embed_pristine(split_name)` returns cached pooled embeddings of
    the untouched pretrained backbone (the feature cache), used while no group has trained yet."""

    def __init__(
        self,
        backbone: Backbone,
        n_classes: int,
        recipe: Recipe,
        *,
        seed: int = 0,
        prefix_cache: bool = True,
        augment: bool | None = None,
        bf16: bool = False,
        progress: bool = False,
        work_dir: Path | None = None,
        resume: bool = False,
        budget_s: float | None = None,
        embed_pristine: Callable[[str], np.ndarray] | None = None,
        eval_batch_size: int = 64,
        objective: Objective | None = None,
    ) -> None:
        self.backbone = backbone
        self.recipe = recipe
        self.seed = seed
        self.prefix_cache = prefix_cache
        self.augment = augment
        self.bf16 = bf16
        self.progress = progress
        self.work_dir = work_dir
        self.resume = resume
        self.budget_s = budget_s
        self.embed_pristine = embed_pristine if recipe.pretrained else None
        self.eval_batch_size = eval_batch_size
        self.objective = objective or Objective()
        self.dist = init_distributed()
        self.head = nn.Linear(backbone.embed_dim, n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.net = Net(backbone, self.head)
        if backbone.modality == "image":
            self.net.to(memory_format=torch.channels_last)
        self.n_groups = len(backbone.groups)
        self.history: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.trained_groups: set[int] = set()
        self.pristine = recipe.pretrained
        self.best: dict[str, Any] = {"score": None, "state": None, "epoch": None}
        self._states: dict[tuple[str, int], Any] = {}
        self._onnx_prefixes: dict[int, Any] = {}

    # -- activations ------------------------------------------------------------------------------------
    def _collate(self, split: Split, idx: Sequence[int]) -> Any:
        return _channels_last(self.backbone.collate([split.examples[int(i)] for i in idx]))

    def _prefix(self, x: Any, k: int) -> Any:
        """Activations entering group k (pooled embeddings when k == n_groups), without autograd."""
        with torch.no_grad():
            h = self.backbone.forward_groups(x, 0, k)
            return self.backbone.pool(h) if k >= self.n_groups else h

    def inputs(
        self, name: str, split: Split, idx: torch.Tensor, k: int, *, augment: bool, gen: torch.Generator
    ) -> tuple[Any, int]:
        """A training batch entering group k: from cached activations when possible, else decoded (and
        augmented) inputs run through the frozen prefix. Returns (activations, group to start at)."""
        cached = None if augment or not self.prefix_cache else self.states(name, split, k)
        if cached is not None:
            return _index(cached, idx), k
        x = self._collate(split, idx.tolist())
        if augment:
            x = _channels_last(augment_images(x, self.backbone.preprocess, gen))
        if k == 0:
            return x, 0
        fast = self._fast_prefix(k) if augment else None
        return (fast(x) if fast is not None else self._prefix(x, k)), k

    def _fast_prefix(self, k: int) -> Any:
        """ONNX Runtime for the frozen groups [0, k) of an augmented phase, where it applies (else None)."""
        if k not in self._onnx_prefixes:
            usable = (
                self.prefix_cache
                and self.backbone.modality == "image"
                and self.backbone.supports_onnx
                and self.backbone.trainable_filter is None
                and all(i >= k for i in self.trained_groups)  # the prefix holds only untouched weights
            )
            from headstart.train.onnx_prefix import onnx_prefix

            self._onnx_prefixes[k] = onnx_prefix(self.backbone, k) if usable else None
        return self._onnx_prefixes[k]

    def states(self, name: str, split: Split, k: int) -> Any | None:
        """Cached activations entering group k for every item of `split` (None when they cannot be cached)."""
        key = (name, k)
        if key in self._states:
            return self._states[key]
        if k == 0:
            return None  # the inputs themselves: collated per batch, not copied
        if k >= self.n_groups and self.pristine and self.embed_pristine is not None:
            out: Any = torch.from_numpy(np.ascontiguousarray(self.embed_pristine(name)))
        else:
            was = [m.training for m in self.backbone.groups]
            self.backbone.eval()
            parts: list[torch.Tensor] | None = []
            for b in range(0, len(split), self.eval_batch_size):
                idx = range(b, min(b + self.eval_batch_size, len(split)))
                part = self._prefix(self._collate(split, idx), k)
                if not isinstance(part, torch.Tensor):  # per-batch padded states (text): computed per batch
                    parts = None
                    break
                parts.append(part)  # type: ignore[union-attr]
            for m, t in zip(self.backbone.groups, was, strict=True):
                m.train(t)
            if parts is None or len({tuple(p.shape[1:]) for p in parts}) > 1:
                self._states[key] = None  # remembered, so it is not attempted again
                return None
            out = torch.cat(parts) if parts else torch.zeros(0)
            if out.dim() == 4:
                out = out.contiguous(memory_format=torch.channels_last)
        self._states[key] = out
        return out

    def _forget_states(self, trained_from: int = 0) -> None:
        """Drop activations that passed through a group >= `trained_from` (they changed)."""
        self._states = {key: v for key, v in self._states.items() if key[1] <= trained_from}

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, name: str, split: Split, k: int | None = None) -> torch.Tensor:
        """Logits for a whole split in eval mode, from cached activations at the lowest frozen boundary."""
        k = self._k_now if k is None else k
        self.net.eval()
        cached = self.states(name, split, k) if len(split) else None
        out = []
        for b in range(0, len(split), self.eval_batch_size):
            idx = torch.arange(b, min(b + self.eval_batch_size, len(split)))
            if cached is not None:
                out.append(self.net(_index(cached, idx), k).float())
            else:
                out.append(self.net(self._collate(split, idx.tolist()), 0).float())
        return torch.cat(out) if out else torch.zeros(0, self.head.out_features)

    def labeled_logits(
        self, name: str, split: Split, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of the split's labeled items: unlabeled inputs (y = -1) have nothing to score."""
        z = self.logits(name, split, k)
        labeled = split.y >= 0
        return z[labeled], split.y[labeled]

    def _metrics(self, name: str, split: Split) -> tuple[float, float]:
        z, y = self.labeled_logits(name, split)
        if not len(y):
            return float("nan"), float("nan")
        loss = float(F.cross_entropy(z, y))
        acc = float((z.argmax(1) == y).float().mean())
        return loss, acc

    # -- head initialisation -------------------------------------------------------------------------
    def _init_head(self, phase: Phase, train: Split, val: Split) -> None:
        if phase.head_init == "zeros":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        elif phase.head_init == "probe":
            from headstart.head import fit_head

            labeled = (train.y >= 0).numpy()  # unlabeled examples (distillation) have y == -1
            E = self.states("train", train, self.n_groups).numpy()[labeled]
            Ev = self.states("val", val, self.n_groups).numpy() if len(val) else None
            lin, _, _ = fit_head(
                E,
                train.y.numpy()[labeled],
                self.head.out_features,
                X_val=Ev,
                y_val=val.y.numpy() if len(val) else None,
                seed=self.seed,
            )
            with torch.no_grad():
                self.head.weight.copy_(torch.from_numpy(lin.weight))
                self.head.bias.copy_(torch.from_numpy(lin.bias))

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _score(self, val_loss: float, val_acc: float, train_loss: float) -> tuple[float, float]:
        if math.isnan(val_acc):  # no validation split: the best is the lowest training loss
            return (0.0, -train_loss if not math.isnan(train_loss) else -math.inf)
        return (val_acc, -val_loss)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def _consider(self, score: tuple[float, float], epoch: int) -> bool:
        if self.best["score"] is None or score > tuple(self.best["score"]):
            self.best = {"score": list(score), "state": self._snapshot(), "epoch": epoch}
            return True
        return False

    def _checkpoint(self, pos: dict[str, Any], opt: Any = None, sched: Any = None) -> None:
        if self.work_dir is None or not self.dist.main:
            return
        state = {
            "pos": pos,
            "model": self.net.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            "best": self.best,
            "history": self.history,
            "warnings": self.warnings,
            "trained_groups": sorted(self.trained_groups),
            "recipe": self.recipe.to_dict(),
            "objective": [m.state_dict() for m in self.objective.modules()],
        }
        save_checkpoint(self.work_dir, state)
        crash = os.environ.get(CRASH_ENV)
        if crash and pos.get("epoch") == int(crash) and pos.get("done_in_phase", 0) > 0:
            os.kill(os.getpid(), signal.SIGKILL)

    # -- the loop ------------------------------------------------------------------------------------------
    @property
    def _k_now(self) -> int:
        """The lowest group that trains in the current phase (n_groups outside training)."""
        return getattr(self, "_k", self.n_groups)

    def fit(self, train: Split, val: Split) -> Trainer:
        t_start = time.perf_counter()
        step_s = tail_s = 0.0  # last step's and last epoch-end's seconds: the budget looks ahead by these
        self.objective.setup(self, train)
        resume_state = load_checkpoint(self.work_dir) if (self.resume and self.work_dir) else None
        start_phase, start_done, epoch = 0, 0, 0
        phase_state: dict[str, Any] = {}
        if resume_state is not None:
            if resume_state["recipe"] != self.recipe.to_dict():
                from headstart.errors import HeadstartError

                raise HeadstartError(
                    f"the checkpoint in {self.work_dir} was written by another recipe",
                    fix="resume with the same strategy and options, or drop --resume",
                )
            self.net.load_state_dict(resume_state["model"])
            for m, st in zip(self.objective.modules(), resume_state.get("objective", []), strict=False):
                m.load_state_dict(st)
            self.best = resume_state["best"]
            self.history = list(resume_state["history"])
            self.warnings = list(resume_state["warnings"])
            self.trained_groups = set(resume_state["trained_groups"])
            self.pristine = self.recipe.pretrained and not self.trained_groups
            pos = resume_state["pos"]
            start_phase, start_done, epoch = pos["phase"], pos["done_in_phase"], pos["epoch"]
            phase_state = pos
        stop_all = False
        for pi in range(start_phase, len(self.recipe.phases)):
            phase = self.recipe.phases[pi]
            resumed_here = resume_state is not None and pi == start_phase
            done = start_done if resumed_here else 0
            n = phase.n_trainable(self.n_groups)
            set_trainable(self.backbone, self.head, n, freeze_batchnorm=self._freeze_bn(phase))
            k = first_trainable_group(self.backbone, n)
            self._k = k
            if stop_all:
                break
            if not resumed_here or not phase_state.get("init_done"):
                self._init_head(phase, train, val)
                # A fresh zero head predicts one class everywhere: nothing to learn from evaluating it (and
                # for a from-scratch network it would cost a full pass over train and val).
                if phase.head_init == "probe" or (phase.head_init == "keep" and phase.epochs == 0):
                    t0 = time.perf_counter()
                    vl, va = self._metrics("val", val)
                    tl, ta = self._metrics("train", train)
                    self._record(phase, epoch, 0, tl, ta, vl, va, time.perf_counter() - t0, None, "init")
                    if self.objective.start_is_candidate:
                        self._consider(self._score(vl, va, tl), epoch)
                self._checkpoint({"phase": pi, "done_in_phase": 0, "epoch": epoch, "init_done": True})
            if phase.epochs == 0:
                continue
            augment = (self.augment if self.augment is not None else phase.uses_augment(self.n_groups)) and (
                self.backbone.modality == "image"
            )
            if not augment and self.prefix_cache:
                self.states("train", train, k)  # computed once per phase, before the clock of epoch 1
            model: nn.Module = self.net
            if self.dist.world > 1:
                from torch.nn.parallel import DistributedDataParallel

                model = DistributedDataParallel(self.net)
            local_bs = max(1, self.recipe.batch_size // self.dist.world)
            n_local = len(train) // self.dist.world
            steps = math.ceil(n_local / local_bs)
            groups = param_groups(self.backbone, self.head, phase)
            extra = [p for m in self.objective.modules() for p in m.parameters()]
            if extra:
                groups.append({"name": "objective", "params": extra, "lr": phase.lr, "weight_decay": 0.0})
            opt = torch.optim.AdamW(groups)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(phase, steps * phase.epochs))
            phase_best = phase_state.get("phase_best") if resumed_here else None
            bad = phase_state.get("bad_epochs", 0) if resumed_here else 0
            if (
                resumed_here
                and resume_state is not None
                and resume_state["optimizer"] is not None
                and done > 0
            ):
                opt.load_state_dict(resume_state["optimizer"])
                sched.load_state_dict(resume_state["scheduler"])
            for e in range(done, phase.epochs):
                epoch += 1
                t0 = time.perf_counter()
                seed = self.seed * 1_000_003 + epoch
                torch.manual_seed(seed)  # dropout etc.: a function of the epoch, so resume replays it
                gen = torch.Generator().manual_seed(seed)
                perm = torch.randperm(len(train), generator=gen)[: n_local * self.dist.world]
                perm = perm[self.dist.rank :: self.dist.world]
                set_trainable(self.backbone, self.head, n, freeze_batchnorm=self._freeze_bn(phase))
                total, correct, count, n_labeled = 0.0, 0, 0, 0
                from headstart.progress import progress_bar

                with progress_bar(
                    steps,
                    f"{phase.name} epoch {e + 1}/{phase.epochs}",
                    enabled=self.progress and self.dist.main,
                ) as advance:
                    for si, b in enumerate(range(0, len(perm), local_bs)):
                        t_step = time.perf_counter()
                        idx = perm[b : b + local_bs]
                        y = train.y[idx]
                        h, start = self.inputs("train", train, idx, k, augment=augment, gen=gen)
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                            out = model(h, start, self.objective.needs_features)
                        z, f = out if self.objective.needs_features else (out, None)
                        step = Step(
                            trainer=self,
                            split=train,
                            logits=z.float(),
                            features=f.float() if f is not None else None,
                            y=y,
                            idx=idx,
                            start=start,
                            augment=augment,
                            generator=gen,
                            progress=(e * steps + si) / max(1, steps * phase.epochs),
                        )
                        loss = self.objective.loss(step)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sched.step()
                        labeled = y >= 0
                        total += float(loss.detach()) * len(idx)
                        correct += int((z.argmax(1) == y)[labeled].sum())
                        count += len(idx)
                        n_labeled += int(labeled.sum())
                        advance(1)
                        step_s = time.perf_counter() - t_step
                        # Mid-epoch, and ahead of time: stop when one more step and the epoch's closing
                        # work (BatchNorm pass, validation) would end past the budget.
                        if self._over_budget(t_start, ahead=step_s + tail_s) and self.dist.world == 1:
                            break
                t_train = time.perf_counter() - t0
                if n > 0 and phase.recalibrate_bn:
                    self._recalibrate_bn(train, k, None if augment else self._states.get(("train", k)))
                if n > 0:
                    self.trained_groups.update(range(k, self.n_groups))
                    self.pristine = False
                    self._forget_states(k)
                tl, ta = total / max(1, count), correct / max(1, n_labeled)
                vl, va = self._metrics("val", val)
                tail_s = time.perf_counter() - t0 - t_train
                lr_now = opt.param_groups[0]["lr"]
                self._record(phase, epoch, e + 1, tl, ta, vl, va, time.perf_counter() - t0, lr_now, "train")
                self.history[-1]["train_seconds"] = t_train
                score = self._score(vl, va, tl)
                improved_phase = phase_best is None or score > tuple(phase_best)
                if improved_phase:
                    phase_best, bad = list(score), 0
                else:
                    bad += 1
                self._consider(score, epoch)
                self._check_gap()
                over_budget = self._over_budget(t_start, ahead=step_s + tail_s)
                stop_phase = phase.patience is not None and bad >= phase.patience
                pos = {
                    "phase": pi,
                    "done_in_phase": e + 1 if not (stop_phase or over_budget) else phase.epochs,
                    "epoch": epoch,
                    "init_done": True,
                    "phase_best": phase_best,
                    "bad_epochs": bad,
                }
                self._checkpoint(pos, opt, sched)
                if over_budget:
                    self.warnings.append(
                        f"stopped after epoch {epoch}: time budget of {self.budget_s:.0f} s spent"
                    )
                    stop_all = True
                    break
                if stop_phase:
                    log.info("early stop in phase %s after %d epochs without improvement", phase.name, bad)
                    break
        if self.best["state"] is not None:
            self.net.load_state_dict(self.best["state"])  # early stopping: the best weights, not the last
        self._warn_if_start_was_better()
        self._k = self.n_groups
        self.backbone.eval()
        self.net.eval()
        self.train_seconds = time.perf_counter() - t_start
        return self

    @torch.no_grad()
    def _recalibrate_bn(self, train: Split, k: int, cached: Any) -> None:
        """Exact BatchNorm statistics of the trained groups over the (unaugmented) training set."""
        bns = [
            m
            for g in self.backbone.groups[k:]
            for m in g.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        if not bns:
            return
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        bs = self.recipe.batch_size
        for b in range(0, len(train), bs):
            idx = torch.arange(b, min(b + bs, len(train)))
            h = (
                _index(cached, idx)
                if cached is not None
                else self._prefix(self._collate(train, idx.tolist()), k)
            )
            self.backbone.forward_groups(h, k)
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom

    def _warn_if_start_was_better(self) -> None:
        """When the starting point could not be kept (see Objective.start_is_candidate), say so if it scored
        higher on validation than what training returns."""
        if self.objective.start_is_candidate or self.best["score"] is None:
            return
        starts = [r["val_acc"] for r in self.history if r["kind"] == "init" and not math.isnan(r["val_acc"])]
        if starts and max(starts) > self.best["score"][0]:
            self.warnings.append(
                f"the starting point scored higher on validation ({max(starts):.3f}) than the trained model "
                f"({self.best['score'][0]:.3f}); {self.objective.describe()['name']} optimises for data the "
                "validation split does not hold, so judge it on labeled data of that domain "
                "(`headstart evaluate RUN DATA`)"
            )

    def _freeze_bn(self, phase: Phase) -> bool:
        mode = phase.batchnorm or ("frozen" if self.recipe.pretrained else "batch")
        return mode == "frozen"

    def _over_budget(self, t_start: float, ahead: float = 0.0) -> bool:
        """Past the budget, or would be after `ahead` more seconds."""
        return self.budget_s is not None and time.perf_counter() - t_start + ahead > self.budget_s

    def _record(
        self,
        phase: Phase,
        epoch: int,
        phase_epoch: int,
        tl: float,
        ta: float,
        vl: float,
        va: float,
        seconds: float,
        lr: float | None,
        kind: str,
    ) -> None:
        row = {
            "epoch": epoch,
            "phase": phase.name,
            "phase_epoch": phase_epoch,
            "kind": kind,
            "train_loss": tl,
            "train_acc": ta,
            "val_loss": vl,
            "val_acc": va,
            "lr": lr,
            "seconds": seconds,
        }
        self.history.append(row)
        if self.progress and self.dist.main:
            from rich.console import Console

            Console(stderr=True, highlight=False).print(
                f"{phase.name} {kind} {phase_epoch}: train loss {tl:.3f} acc {ta:.3f} | val loss {vl:.3f} "
                f"acc {va:.3f} | {seconds:.1f}s"
            )

    def _check_gap(self) -> None:
        rows = [r for r in self.history if r["kind"] == "train" and not math.isnan(r["val_acc"])]
        if len(rows) < 3:
            return
        gaps = [r["train_acc"] - r["val_acc"] for r in rows[-3:]]
        if gaps[-1] > GAP_WARNING and gaps[-1] > gaps[-2] > gaps[-3]:
            msg = (
                f"overfitting: train accuracy {rows[-1]['train_acc']:.2f} vs val {rows[-1]['val_acc']:.2f} "
                f"at epoch {rows[-1]['epoch']}, and the gap is widening (early stopping keeps the best epoch)"
            )
            if not any(w.startswith("overfitting") for w in self.warnings):
                self.warnings.append(msg)
                log.warning(msg)
