"""Are the probabilities honest? Expected calibration error, reliability data, temperature scaling.

A classifier is calibrated when, among the predictions it makes with confidence p, a fraction p is right.
Temperature scaling (Guo et al., ICML 2017) divides every logit by one scalar T fitted on held-out data:
it changes no prediction (argmax is unchanged), only how sure the model says it is.

    T = fit_temperature(val_logits, val_labels)
    ece(softmax(test_logits / T), test_labels)

`calibrate_temperature` is what `evaluate` uses: it fits T only when validation can support it and
applies it only when it helps on validation items it was not fitted on; otherwise T = 1 with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

N_BINS = 15
# T is searched in [1/4, 10]. T < 1/4 would make the model 4x sharper than it was trained to be: the NLL
# optimum only goes there when validation has (almost) no errors, i.e. when it says nothing about the
# scale, and T = 0.01 turned a 0.55 guess on white noise into 1.000. T > 10 squashes every prediction
# towards uniform, which only pays on a near-chance model. Guo et al.'s fitted T lie in about [1, 4].
T_MIN, T_MAX = 0.25, 10.0
# The fit is driven by the wrong (and the least sure right) items: with 0 errors T runs to T_MIN, with
# 0 right ones to T_MAX, and with a handful either way its estimate is noise. 5 of each also gives every
# one of the 5 cross-validation folds at least one of each.
MIN_ERRORS = 5
MIN_CORRECT = 5
N_FOLDS = 5
METHOD = (
    "temperature scaling: NLL minimised over log T in [0.25, 10] (scipy minimize_scalar, bounded); "
    "applied only if 5-fold cross-validation on val lowers held-out NLL and does not raise ECE"
)


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


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (T_MIN, T_MAX)
) -> float:
    """The T in `bounds` (default [T_MIN, T_MAX]) minimising validation NLL of softmax(logits / T).

    NLL is convex in 1/T, so it is unimodal in log T: a bounded scalar search over log T finds the minimum
    without gradients. Returns 1.0 for no items.
    """
    from scipy.optimize import minimize_scalar  # not on the predict path

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        return 1.0
    lo, hi = bounds
    res = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(min(max(math.exp(res.x), lo), hi))


# The comparison's temperature only takes each model's own scale out of its likelihood; it is never applied
# to a prediction, so it may range wider than a calibration's (a strongly regularised probe is ~10x too
# soft, and held to T >= 1/4 its likelihood would be judged on a scale it cannot reach).
COMPARE_T_BOUNDS = (0.02, 50.0)


def tempered_nll(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(T, each item's NLL under softmax(logits / T)) with T fitted on these very items: how well a model
    ranks the true class, its confidence scale aside (one fitted scalar per model: alike for all)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    t = fit_temperature(logits, labels, COMPARE_T_BOUNDS)
    per_item = -log_softmax(logits / t)[np.arange(len(labels)), labels]
    return t, per_item


def _held_out_proba(logits: np.ndarray, labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """softmax(logits / T) where each item's T was fitted on the other folds (stratified by right/wrong)."""
    from sklearn.model_selection import StratifiedKFold

    correct = logits.argmax(axis=1) == labels
    out = np.empty_like(logits)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fit_idx, held_idx in folds.split(logits, correct):
        out[held_idx] = softmax(logits[held_idx] / fit_temperature(logits[fit_idx], labels[fit_idx]))
    return out


def calibrate_temperature(logits: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Fit T on validation logits and decide whether to apply it; the content of calibration.json.

    `temperature` (= `applied_temperature`) is what predictions use: the fitted T when `status` is
    "applied", else 1.0 with `reason` saying why. T is applied only when validation has at least
    MIN_ERRORS wrong and MIN_CORRECT right items, and when, fitted on 4/5 of val and scored on the other
    1/5 (5 folds), it lowers NLL and does not raise ECE against T = 1 on those held-out items.
    """
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not match")
    n = len(y)
    finite = bool(np.isfinite(z).all())
    n_errors = int((z.argmax(axis=1) != y).sum()) if n else 0
    ece_before = ece(softmax(z), y) if n and finite else float("nan")
    record: dict[str, Any] = {
        "temperature": 1.0,
        "applied_temperature": 1.0,
        "fitted_temperature": None,
        "status": "skipped",
        "reason": "",
        "bounds": [T_MIN, T_MAX],
        "fitted_on": "val",
        "n": n,
        "n_errors": n_errors,
        "ece_before": ece_before,
        "ece_after": ece_before,
        "cv": None,
        "method": METHOD,
    }

    def skipped(reason: str) -> dict[str, Any]:
        record["reason"] = f"{reason}; predictions keep T = 1 (uncalibrated)"
        return record

    if not finite:
        return skipped("the validation logits are not all finite")
    if n_errors < MIN_ERRORS:
        return skipped(
            f"only {n_errors} of {n} validation items are wrong and fitting T needs at least {MIN_ERRORS} "
            "(with none, the fit makes every prediction look certain)"
        )
    if n - n_errors < MIN_CORRECT:
        return skipped(
            f"only {n - n_errors} of {n} validation items are right and fitting T needs at least "
            f"{MIN_CORRECT}"
        )
    fitted = fit_temperature(z, y)
    record["fitted_temperature"] = fitted
    held = _held_out_proba(z, y, N_FOLDS, seed)
    cv = {
        "folds": N_FOLDS,
        "nll_before": nll(z, y),
        "nll_after": float(-np.log(np.maximum(held[np.arange(n), y], 1e-300)).mean()),
        "ece_before": ece_before,
        "ece_after": ece(held, y),
    }
    record["cv"] = cv
    at_bound = " (at its bound)" if not T_MIN * 1.01 < fitted < T_MAX / 1.01 else ""
    if not cv["nll_after"] < cv["nll_before"]:
        return skipped(
            f"T = {fitted:.3g}{at_bound} does not lower NLL on held-out validation folds "
            f"({cv['nll_before']:.4f} -> {cv['nll_after']:.4f})"
        )
    if cv["ece_after"] > cv["ece_before"]:
        return skipped(
            f"T = {fitted:.3g}{at_bound} makes ECE worse on held-out validation folds "
            f"({cv['ece_before']:.3f} -> {cv['ece_after']:.3f})"
        )
    record.update(
        temperature=fitted,
        applied_temperature=fitted,
        status="applied",
        reason=f"lowers held-out NLL {cv['nll_before']:.4f} -> {cv['nll_after']:.4f} and ECE "
        f"{cv['ece_before']:.3f} -> {cv['ece_after']:.3f} (5-fold cross-validation on val){at_bound}",
        ece_after=ece(softmax(z / fitted), y),
    )
    return record


def applied_temperature(record: dict[str, Any]) -> tuple[float, str | None]:
    """The T predictions should use from a calibration.json record, and a warning when it is not usable.

    Records written before T was bounded may hold e.g. T = 0.01 (certainty on anything): such a T, a
    non-number or a "skipped" record gives 1.0.
    """
    if record.get("status") == "skipped":
        return 1.0, None
    raw = record.get("applied_temperature", record.get("temperature", 1.0))
    try:
        t = float(raw)
    except (TypeError, ValueError):
        return 1.0, f"temperature {raw!r} is not a number: using T = 1"
    if not math.isfinite(t) or not T_MIN <= t <= T_MAX:
        return 1.0, (
            f"temperature {t:g} is outside [{T_MIN:g}, {T_MAX:g}]: using T = 1; "
            "fix: run `headstart evaluate RUN` to refit it"
        )
    return t, None
