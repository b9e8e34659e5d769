"""Are the probabilities honest? Expected calibration error, reliability data, temperature scaling.

A classifier is calibrated when, among the predictions it makes with confidence p, a fraction p is right.
Temperature scaling (Guo et al., ICML 2017) divides every logit by one scalar T fitted on held-out data:
it changes no prediction (argmax is unchanged), only how sure the model says it is.

    T = fit_temperature(val_logits, val_labels)
    ece(softmax(test_logits / T), test_labels)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

N_BINS = 15
# Temperatures outside this range mean the logits carry no usable scale; clamp rather than explode.
T_MIN, T_MAX = 0.01, 100.0


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Equal-width bins (i/n, (i+1)/n]; a confidence of exactly 0 joins the first bin.
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability(proba: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, list[Any]]:
    """Per confidence bin: mean confidence, accuracy and count (None where a bin is empty)."""
    proba, labels = np.asarray(proba, dtype=np.float64), np.asarray(labels)
    conf = proba.max(axis=1) if len(proba) else np.zeros(0)
    correct = (proba.argmax(axis=1) == labels).astype(np.float64) if len(proba) else np.zeros(0)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return {
        "confidence": [float(conf_sum[b] / count[b]) if count[b] else None for b in range(n_bins)],
        "accuracy": [float(acc_sum[b] / count[b]) if count[b] else None for b in range(n_bins)],
        "count": [int(c) for c in count],
        "edges": [b / n_bins for b in range(n_bins + 1)],
    }


def ece(proba: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (bin share) * |accuracy - mean confidence|."""
    r = reliability(proba, labels, n_bins)
    n = sum(r["count"])
    if n == 0:
        return float("nan")
    return float(
        sum(
            c / n * abs(a - p)
            for c, a, p in zip(r["count"], r["accuracy"], r["confidence"], strict=True)
            if c
        )
    )


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / T)."""
    lp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-lp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, tol: float = 1e-6) -> float:
    """The T in [0.01, 100] minimising validation NLL of softmax(logits / T).

    NLL is convex in 1/T, so it is unimodal in log T and a golden-section search over log T finds the
    minimum without gradients or tuning (about 60 NLL evaluations).
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        return 1.0

    def f(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(math.exp((lo + hi) / 2))
