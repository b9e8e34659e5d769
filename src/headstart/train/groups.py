"""A backbone's layer groups under a recipe's phase: which train (and in which mode), their optimizer groups
with discriminative rates, the network entered at any group, and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from headstart.backbones.base import Backbone
from headstart.recipes import Phase


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


def lr_lambda(phase: Phase, total: int) -> Callable[[int], float]:
    """The phase's rate factor per step: warm-up, then cosine (floor 1%), one-cycle (floor 0.1%) or linear
    decay to 0; constant is 1 throughout. ("linear" is continued pretraining's schedule, set by `adapt`;
    recipe files offer the other three.)"""
    warm = max(1, round(phase.warmup * total)) if phase.schedule != "constant" else 0
    if phase.schedule == "onecycle":
        warm = max(1, round(0.3 * total))

    def f(step: int) -> float:
        if phase.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        if phase.schedule == "linear":
            return max(0.0, (total - step) / max(1, total - warm))
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
    backbone: Backbone,
    head: nn.Linear,
    n_trainable: int,
    *,
    freeze_batchnorm: bool = False,
    drop_path: float | None = None,
) -> bool:
    """requires_grad and train/eval mode per group: frozen groups stay in eval mode (BatchNorm frozen).

    `freeze_batchnorm`: BatchNorm layers of trained groups also stay in eval mode (running statistics
    used and kept; their affine parameters still train). `drop_path`: the stochastic depth rate of the
    deepest block (None: the network's own), set on every module that has one (`set_drop_path`).
    Returns whether the backbone has stochastic depth (False: `drop_path` had nothing to set)."""
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
    has_drop_path = set_drop_path(backbone, drop_path)
    if freeze_batchnorm:
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    head.requires_grad_(True)
    head.train()
    return has_drop_path


def set_drop_path(backbone: Backbone, rate: float | None) -> bool:
    """Set the stochastic depth rate of every module that has one; False when the backbone has none."""
    found = False
    for m in backbone.modules():
        if hasattr(m, "set_drop_path"):
            m.set_drop_path(rate)
            found = True
    return found


def first_trainable_group(backbone: Backbone, n_trainable: int) -> int:
    """Index of the lowest group with a parameter that trains: everything below it can be cached."""
    n_groups = len(backbone.groups)
    for i in range(n_groups - n_trainable, n_groups):
        if any(p.requires_grad for p in backbone.groups[i].parameters()):
            return i
    return n_groups
