"""The linear head: multinomial logistic regression on frozen embeddings, L2 chosen on held-out data.

Fitted full-batch with PyTorch's L-BFGS on standardised features (warm-started along the L2 path), then
the standardisation is folded into the weights, so the stored head is a plain `logits = x @ W.T + b`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from headstart.imbalance import ACCURACY, item_weights

# Inverse L2 strengths tried, strongest first (sklearn's C: loss = C * sum(CE) + |W|^2 / 2).
DEFAULT_CS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
PATH_PATIENCE = 2


@dataclass
class LinearHead:
    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)

    def logits(self, X: np.ndarray) -> np.ndarray:
        return X @ self.weight.T + self.bias

    def proba(self, X: np.ndarray) -> np.ndarray:
        z = self.logits(X)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @property
    def num_params(self) -> int:
        return int(self.weight.size + self.bias.size)


def _fit_standardised(
    Z: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    C: float,
    init: torch.Tensor | None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Minimise mean cross-entropy + |W|^2 / (2 C n) over theta = [W.ravel(), b]; with `sample_weight`
    (mean 1: headstart.imbalance), each item's cross-entropy weighs that much, as scikit-learn's."""
    n, d = Z.shape
    lam = 1.0 / (C * n)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(Z.dtype)
    scale = None if sample_weight is None else sample_weight[:, None].to(Z.dtype)
    if scale is not None:  # the weighted one-hot weighs the loss; `scale` the softmax side of the gradient
        onehot = onehot * scale

    def loss_grad(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Closed-form gradient: several times faster than autograd for this small convex problem.
        w, c = theta[: n_classes * d].view(n_classes, d), theta[n_classes * d :]
        logp = torch.log_softmax(Z @ w.T + c, dim=1)
        g = ((logp.exp() if scale is None else logp.exp() * scale) - onehot) / n
        loss = -(onehot * logp).sum() / n + 0.5 * lam * (w * w).sum()
        return loss, torch.cat([(g.T @ Z + lam * w).reshape(-1), g.sum(0)])

    x = torch.zeros(n_classes * (d + 1), dtype=Z.dtype) if init is None else init.clone()
    return minimise(loss_grad, x)


def minimise(
    loss_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor
) -> torch.Tensor:
    """Full-batch L-BFGS (strong Wolfe line search) from `x`, on a closed-form (loss, gradient)."""
    x.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [x],
        lr=1,
        max_iter=300,
        tolerance_grad=1e-4,  # sklearn's lbfgs default on the same mean loss
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        with torch.no_grad():
            loss, g = loss_grad(x)
        x.grad = g
        return loss

    opt.step(closure)
    return x.detach()


# Features whose standard deviation is below this fraction of the median one are left out of the head
# (weight 0). Folding the standardisation into the weights divides by the spread: a feature that barely
# varies on the training set (a channel nearly dead after ReLU6) would otherwise get a weight in the
# hundreds, harmless on frozen features but explosive once fine-tuning moves that channel. Dropping them
# (rather than flooring their spread) keeps the standardised problem well conditioned for L-BFGS.
SD_FLOOR = 0.01


class _Standardiser:
    def __init__(self, X: np.ndarray) -> None:
        self.mu = X.mean(axis=0)
        sd = X.std(axis=0)
        floor = max(1e-6, SD_FLOOR * float(np.median(sd)) if sd.size else 0.0)
        self.keep = (sd >= floor).astype(np.float32)
        self.sd = np.maximum(sd, floor)

    def __call__(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((X - self.mu) / self.sd * self.keep).astype(np.float32))

    def fold(self, theta: torch.Tensor, n_classes: int) -> LinearHead:
        d = len(self.mu)
        w = theta[: n_classes * d].numpy().reshape(n_classes, d) / self.sd * self.keep
        b = theta[n_classes * d :].numpy() - w @ self.mu
        return LinearHead(weight=w.astype(np.float32), bias=b.astype(np.float32))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the head's ops are small (a 1,000 x 1,280 matmul, L-BFGS's dot products),
    so a second OpenMP thread costs more in synchronisation than it computes; measured 2x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _iter_path(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    Cs: tuple[float, ...],
    class_weight: np.ndarray | None = None,
) -> Iterator[LinearHead]:
    """One head per C, warm-starting each from the previous (strong to weak regularisation)."""
    std = _Standardiser(X)
    Z, t = std(X), torch.from_numpy(y.astype(np.int64))
    sw = None if class_weight is None else torch.from_numpy(np.asarray(class_weight, np.float32)[y])
    init = None
    for C in Cs:
        with _one_thread():
            init = _fit_standardised(Z, t, n_classes, C, init, sw)
        yield std.fold(init, n_classes)


def fit_path(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    Cs: tuple[float, ...],
    class_weight: np.ndarray | None = None,
) -> list[LinearHead]:
    """One head per C (warm-started along the path); with one C, the head at that strength."""
    return list(_iter_path(X, y, n_classes, Cs, class_weight))


def _score(head: LinearHead, X: np.ndarray, y: np.ndarray, metric: str = ACCURACY) -> tuple[float, float]:
    """(accuracy, -log loss): higher is better on both; log loss breaks accuracy ties. By balanced accuracy
    (skewed classes), both are class-balanced: each item weighs by the inverse of its class's count."""
    p = head.proba(X)
    correct = p.argmax(1) == y
    loglik = np.log(np.maximum(p[np.arange(len(y)), y], 1e-12))
    if metric == ACCURACY:
        return float(correct.mean()), float(loglik.mean())
    w = item_weights(y)
    return float((correct * w).mean()), float((loglik * w).mean())


def stratified_folds(y: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Held-out item indices of each fold, every class spread evenly over the folds (seeded)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        fold_of[idx] = np.arange(len(idx)) % n_folds
    return [np.flatnonzero(fold_of == f) for f in range(n_folds)]


def fit_head(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    Cs: tuple[float, ...] = DEFAULT_CS,
    cv: int = 5,
    seed: int = 0,
    class_weight: np.ndarray | None = None,
    metric: str = ACCURACY,
) -> tuple[LinearHead, float, dict[float, float]]:
    """Fit the head; choose C on (X_val, y_val), or by stratified CV on the training data when absent.

    `class_weight` (one per class, headstart.imbalance) weighs each item's loss; `metric` ("accuracy" or
    "balanced_accuracy") is what chooses C. Returns (head fitted on X, chosen C, {C: selection score}).
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    cw = class_weight
    if len(Cs) == 1:
        return fit_path(X, y, n_classes, Cs, cw)[0], Cs[0], {}
    if X_val is not None and y_val is not None and len(y_val):
        # Walk the path from strong to weak regularisation and stop once val has not improved for
        # PATH_PATIENCE steps: the weakly regularised end is the slowest to fit and rarely the best.
        heads, scores = [], []
        for h in _iter_path(X, y, n_classes, Cs, cw):
            heads.append(h)
            scores.append(_score(h, X_val, y_val, metric))
            best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            if len(scores) - 1 - best >= PATH_PATIENCE:
                break
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        return heads[best], Cs[best], {C: s[0] for C, s in zip(Cs, scores, strict=False)}
    n_folds = int(min(cv, np.bincount(y, minlength=n_classes)[np.unique(y)].min()))
    if n_folds < 2:
        return fit_path(X, y, n_classes, (1.0,), cw)[0], 1.0, {}
    # Every fold walks its own path in lockstep; the walk stops, as on a val split, once the summed fold
    # score has not improved for PATH_PATIENCE steps.
    folds = stratified_folds(y, n_folds, seed)
    walks = []
    for held in folds:
        train = np.setdiff1d(np.arange(len(y)), held)
        walks.append(_iter_path(X[train], y[train], n_classes, Cs, cw))
    totals = np.full((len(Cs), 2), -np.inf)
    for i in range(len(Cs)):
        totals[i] = 0.0
        for held, walk in zip(folds, walks, strict=True):
            totals[i] += _score(next(walk), X[held], y[held], metric)
        best = max(range(i + 1), key=lambda j: (tuple(totals[j]), -j))
        if i - best >= PATH_PATIENCE:
            break
    best = max(range(len(Cs)), key=lambda i: (tuple(totals[i]), -i))
    return (
        fit_path(X, y, n_classes, (Cs[best],), cw)[0],
        Cs[best],
        {C: totals[i, 0] / n_folds for i, C in enumerate(Cs) if np.isfinite(totals[i, 0])},
    )
