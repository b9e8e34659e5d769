"""LogME: the log marginal evidence of a Bayesian linear model on frozen features.

You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
ICML 2021 (arXiv:2102.11005). For each class c the one-hot column y (n,) is modelled as
y = F w + noise, w ~ N(0, alpha^-1 I), noise ~ N(0, beta^-1 I), with F the (n, D) features. The evidence

    L(alpha, beta) = n/2 log beta + D/2 log alpha - n/2 log 2pi
                     - beta/2 |F m - y|^2 - alpha/2 |m|^2 - 1/2 log det(A),
    A = alpha I + beta F^T F,   m = beta A^-1 F^T y,

is maximised over (alpha, beta) by MacKay's fixed point (the paper's Algorithm 1):

    gamma = sum_i beta s_i / (alpha + beta s_i)   (s_i: eigenvalues of F^T F)
    alpha = gamma / |m|^2,   beta = (n - gamma) / |F m - y|^2.

Everything runs in the eigenbasis of F^T F from one thin SVD of F (shared by all classes), so each
iteration costs O(min(n, D)). The score is the mean over classes of L / n: higher means the features
explain the labels with a simpler linear model, which tracks fine-tuned accuracy across backbones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITER = 1000
# Relative change of alpha/beta that counts as converged (the paper's code stops at 1e-2 after 11 steps;
# a tighter tolerance costs microseconds here and makes the fixed point checkable).
TOL = 1e-6
# alpha and beta are kept inside [BOUND^-1, BOUND]: the evidence can peak at a boundary (alpha -> inf when
# the features carry no signal for a class, beta -> inf when D >= n fits it exactly), where the limit
# value is finite but the iterates diverge.
BOUND = 1e12


@dataclass(frozen=True)
class Evidence:
    """The maximised evidence of one target column and where it was reached."""

    log_evidence: float  # L(alpha, beta), not divided by n
    alpha: float
    beta: float
    iterations: int


class _Spectrum:
    """Thin SVD of F: F = U diag(sigma) V^T, with the eigenvalues s = sigma^2 of F^T F."""

    def __init__(self, F: np.ndarray) -> None:
        self.n, self.d = F.shape
        U, sigma, _ = np.linalg.svd(F, full_matrices=False)
        keep = sigma > sigma.max(initial=0.0) * 1e-10  # numerically zero directions carry no signal
        self.U, self.s = U[:, keep], sigma[keep] ** 2


def _evidence(spec: _Spectrum, y: np.ndarray) -> Evidence:
    n, s = spec.n, spec.s
    z = spec.U.T @ y  # y in the left singular basis
    perp = float(y @ y - z @ z)  # part of y no linear model of F can fit
    alpha, beta = 1.0, 1.0
    iterations = 0
    while iterations < MAX_ITER:
        iterations += 1
        shrink = alpha / (alpha + beta * s)
        m2 = float(np.sum((beta * np.sqrt(s) * z / (alpha + beta * s)) ** 2))  # |m|^2
        res = perp + float(np.sum((shrink * z) ** 2))  # |F m - y|^2
        gamma = float(np.sum(beta * s / (alpha + beta * s)))
        new_alpha = float(np.clip(gamma / max(m2, 1e-300), 1 / BOUND, BOUND))
        new_beta = float(np.clip((n - gamma) / max(res, 1e-300), 1 / BOUND, BOUND))
        done = abs(new_alpha - alpha) <= TOL * alpha and abs(new_beta - beta) <= TOL * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return Evidence(_log_evidence(spec, y, alpha, beta), alpha, beta, iterations)


def _log_evidence(spec: _Spectrum, y: np.ndarray, alpha: float, beta: float) -> float:
    n, d, s = spec.n, spec.d, spec.s
    z = spec.U.T @ y
    perp = float(y @ y - z @ z)
    m2 = float(np.sum((beta * np.sqrt(s) * z / (alpha + beta * s)) ** 2))  # |m|^2 at this (alpha, beta)
    res = perp + float(np.sum((alpha / (alpha + beta * s) * z) ** 2))  # |F m - y|^2
    # log det A: the r nonzero eigen-directions give alpha + beta s_i, the other d - r give alpha.
    logdet = float(np.sum(np.log(alpha + beta * s))) + (d - len(s)) * np.log(alpha)
    return float(
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * res
        - alpha / 2 * m2
        - logdet / 2
    )


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """L(alpha, beta) of one real-valued target column (the formula in the module docstring)."""
    F = np.asarray(features, dtype=np.float64)
    return _log_evidence(_Spectrum(F), np.asarray(target, dtype=np.float64), alpha, beta)


def logme_evidences(features: np.ndarray, labels: np.ndarray) -> list[Evidence]:
    """The maximised evidence of each class's one-hot column, classes in sorted label order."""
    F = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if F.ndim != 2 or len(F) != len(y):
        raise ValueError(f"features must be (n, D) with n == len(labels); got {F.shape} and {y.shape}")
    spec = _Spectrum(F)
    return [_evidence(spec, (y == c).astype(np.float64)) for c in np.unique(y)]


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score of `features` for classification `labels`: mean over classes of log evidence / n."""
    evs = logme_evidences(features, labels)
    return float(np.mean([e.log_evidence for e in evs]) / len(labels))
