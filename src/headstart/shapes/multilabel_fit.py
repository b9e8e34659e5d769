"""The multi-label probe's arithmetic: one-vs-rest logistic regression, per-label thresholds and
temperatures, and the scores with intervals.

- **One-vs-rest logistic regression, C chosen on val by mAP.** The K binary problems share the features
  and their losses are separable, so they are fitted as one sigmoid head (mean over items of the summed
  per-label binary cross-entropy + |W|^2 / (2 C n)) by L-BFGS on standardised features, warm-started along
  the C path and folded into a plain `outputs = x @ W.T + b` (headstart.head's standardisation).
- **Per-label temperature** (headstart.calibration's rule, on each label's sigmoid as the two-class softmax
  of [0, z]): fitted on the tuning outputs, applied only when, fitted on 4/5 of them, it lowers NLL and
  does not raise ECE on the other 1/5; else T = 1 with the reason.
- **Per-label threshold** on the (calibrated) score, maximising that label's F1 on the tuning outputs
  (the midpoint below the best cut, so a score on the edge is not the edge); a label with no positive
  there keeps 0.5. The probe tunes on val together with 5-fold cross-fitted train outputs
  (`cross_fitted_outputs`); a fine-tune re-tunes on val.
- **Scores**: mAP (mean over labels with a positive of average precision, ties broken by item order),
  micro- and macro-F1 (macro over labels with a positive), subset accuracy, per-label precision, recall,
  F1 and AP; percentile bootstrap 95 % intervals over items (Wilson for subset accuracy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.head import DEFAULT_CS, PATH_PATIENCE, LinearHead
from headstart.intervals import N_BOOT, bootstrap_indices, wilson

FALLBACK_THRESHOLD = 0.5
RULE = "score = sigmoid(output / temperature); a label is on when its score >= its threshold"


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def _fit_standardised(Z: Any, Y: Any, C: float, init: Any) -> Any:
    """theta = [W.ravel(), b] minimising mean summed BCE + |W|^2 / (2 C n) (closed-form gradient)."""
    import torch

    from headstart.head import minimise

    n, d = Z.shape
    k = Y.shape[1]
    lam = 1.0 / (C * n)

    def loss_grad(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, c = theta[: k * d].view(k, d), theta[k * d :]
        z = Z @ w.T + c
        loss = (torch.nn.functional.softplus(z) - Y * z).sum() / n + 0.5 * lam * (w * w).sum()
        g = (torch.sigmoid(z) - Y) / n
        return loss, torch.cat([(g.T @ Z + lam * w).reshape(-1), g.sum(0)])

    return minimise(loss_grad, torch.zeros(k * (d + 1), dtype=Z.dtype) if init is None else init.clone())


def fit_ovr(
    X: np.ndarray, Y: np.ndarray, X_val: np.ndarray, Y_val: np.ndarray, *, C: float | None
) -> tuple[LinearHead, float, dict[str, float], str]:
    """(head, chosen C, {C: val mAP}, how C was chosen). `C` given: that C; no val positive: C = 1."""
    import torch

    from headstart.head import _one_thread, _Standardiser

    std = _Standardiser(np.asarray(X, np.float32))
    Z, T = std(np.asarray(X, np.float32)), torch.from_numpy(np.asarray(Y, np.float32))
    has_val = len(Y_val) > 0 and bool(np.asarray(Y_val).sum() > 0)
    if C is not None or not has_val:
        chosen = float(C) if C is not None else 1.0
        with _one_thread():
            theta = _fit_standardised(Z, T, chosen, None)
        how = "given (--C)" if C is not None else "no val item with a label: C = 1 (not chosen)"
        return std.fold(theta, Y.shape[1]), chosen, {}, how
    heads: list[LinearHead] = []
    scores: list[float] = []
    theta = None
    for c in DEFAULT_CS:  # strong to weak regularisation, stopped once val mAP has not improved
        with _one_thread():
            theta = _fit_standardised(Z, T, c, theta)
        heads.append(std.fold(theta, Y.shape[1]))
        scores.append(mean_ap(heads[-1].logits(X_val), Y_val))
        best = int(np.argmax(scores))
        if len(scores) - 1 - best >= PATH_PATIENCE:
            break
    best = int(np.argmax(scores))
    return heads[best], DEFAULT_CS[best], dict(zip(map(str, DEFAULT_CS), scores, strict=False)), "val mAP"


def cross_fitted_outputs(X: np.ndarray, Y: np.ndarray, C: float, *, seed: int, folds: int = 5) -> np.ndarray:
    """Each training item's outputs from a head fitted (at `C`) without it: k-fold, the folds stratified on
    each item's rarest label. What the thresholds are tuned on beside val: a label with two val positives
    would otherwise get its cut from two scores (measured: "sweet" tuned to 0.002 on val, test F1 0.06)."""
    import torch

    from headstart.head import _one_thread, _Standardiser, stratified_folds

    X, Y = np.asarray(X, np.float32), np.asarray(Y, np.float32)
    freq = Y.sum(0)
    rarest = np.where(Y.any(1), np.argmin(np.where(Y > 0, freq, np.inf), axis=1), -1)
    out = np.zeros(Y.shape, np.float32)
    for held in stratified_folds(rarest, min(folds, len(X)), seed):
        keep = np.setdiff1d(np.arange(len(X)), held)
        std = _Standardiser(X[keep])
        with _one_thread():
            theta = _fit_standardised(std(X[keep]), torch.from_numpy(Y[keep]), C, None)
        out[held] = std.fold(theta, Y.shape[1]).logits(X[held])
    return out


def average_precision(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AP of scores `s` (..., n) against 0/1 `y` (..., n) along the last axis; nan without a positive."""
    order = np.argsort(-s, axis=-1, kind="stable")
    ys = np.take_along_axis(y, order, axis=-1).astype(np.float64)
    tp = np.cumsum(ys, axis=-1)
    precision = tp / np.arange(1, ys.shape[-1] + 1)
    pos = ys.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pos > 0, (precision * ys).sum(axis=-1) / pos, np.nan)


def mean_ap(S: np.ndarray, Y: np.ndarray) -> float:
    ap = average_precision(np.asarray(S).T, np.asarray(Y).T)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def tune_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The cut on scores `p` maximising F1 on (p, y): midway between the best cut and the next score below
    (so the cut is not on a val item's score). No positive: FALLBACK_THRESHOLD."""
    if not y.any():
        return FALLBACK_THRESHOLD
    cuts = np.unique(p)[::-1]  # high to low
    pred = p[None, :] >= cuts[:, None]
    tp = (pred & (y[None, :] > 0)).sum(1)
    f1 = 2 * tp / (pred.sum(1) + y.sum())
    i = int(np.argmax(f1))  # the highest cut among the best (argmax takes the first)
    below = cuts[i + 1] if i + 1 < len(cuts) else 0.0
    return float((cuts[i] + below) / 2)


def tune_readout(Z: np.ndarray, Y_val: np.ndarray, source: str = "val") -> dict[str, Any]:
    """Per output of the head's outputs `Z` on `source` (val; the probe adds cross-fitted train outputs;
    lists in output order): the temperature (calibration's rule), then the F1-best threshold on the
    calibrated scores, and where each came from."""
    from headstart.calibration import calibrate_temperature

    k_out = Z.shape[1]
    out: dict[str, list[Any]] = {
        "thresholds": [],
        "threshold_source": [],
        "temperature": [],
        "calibration": [],
    }
    for k in range(k_out):
        z, y = Z[:, k], np.asarray(Y_val[:, k] if len(Y_val) else [], dtype=np.int64)
        rec = calibrate_temperature(np.stack([np.zeros_like(z), z], axis=1), y) if len(z) else None
        t = float(rec["temperature"]) if rec else 1.0
        out["temperature"].append(t)
        out["calibration"].append(
            {
                "applied": t != 1.0,
                "reason": rec["reason"] if rec else "no val items",
                "ece_before": rec["ece_before"] if rec else None,
                "ece_after_cv": (rec.get("cv") or {}).get("ece_after") if rec else None,
            }
        )
        out["thresholds"].append(tune_threshold(sigmoid(z / t), y))
        out["threshold_source"].append(
            f"{source} F1"
            if y.any()
            else f"fallback {FALLBACK_THRESHOLD}: no {source} positive of this label"
        )
    return out


def scores_of(Z: np.ndarray, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated scores, thresholds), in output order."""
    t = np.asarray(state["temperature"], dtype=np.float64)
    return sigmoid(np.asarray(Z, np.float64) / t), np.asarray(state["thresholds"], dtype=np.float64)


def _binary_ece(p: np.ndarray, y: np.ndarray) -> float:
    from headstart.calibration import ece

    return ece(np.stack([1 - p, p], axis=1), y.astype(np.int64)) if len(y) else float("nan")


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)


def _counts(pred: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn, positives) per resample (rows of `idx`) and label."""
    P, T = pred[idx], y[idx]  # (B, n, K)
    tp = (P & T).sum(1)
    return tp, (P & ~T).sum(1), (~P & T).sum(1), T.sum(1)


def _ci(values: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


def multilabel_scores(
    Z: np.ndarray, Y: np.ndarray, state: dict[str, Any], *, seed: int = 0
) -> dict[str, Any]:
    """Every score of the head's outputs `Z` (n, K) against 0/1 `Y` (n, K), with 95 % intervals."""
    labels = list(state["outputs"])
    S, thr = scores_of(Z, state)
    y = np.asarray(Y) > 0
    pred = np.greater_equal(S, thr)
    n = len(y)
    full = np.arange(n)[None, :]
    tp, fp, fn, pos = (a[0] for a in _counts(pred, y, full))
    ap = average_precision(S.T, y.T)
    boot: dict[str, list[np.ndarray]] = {k: [] for k in ("micro", "macro", "map", "f1", "p", "r", "ap")}
    idx = bootstrap_indices(n, N_BOOT, seed) if n else np.zeros((0, 0), dtype=np.int64)
    for i in range(0, len(idx), 100):  # 100 resamples at a time: (100, n, K) stays small
        chunk = idx[i : i + 100]
        btp, bfp, bfn, bpos = _counts(pred, y, chunk)
        f1 = _f1(btp, bfp, bfn)
        has = bpos > 0
        bap = average_precision(np.moveaxis(S[chunk], 1, 2), np.moveaxis(y[chunk], 1, 2))
        boot["micro"].append(_f1(btp.sum(1), bfp.sum(1), bfn.sum(1)))
        boot["macro"].append(
            np.array([np.nanmean(r[h]) if h.any() else np.nan for r, h in zip(f1, has, strict=True)])
        )
        boot["map"].append(np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in bap]))
        with np.errstate(invalid="ignore", divide="ignore"):
            boot["p"].append(np.where(btp + bfp > 0, btp / np.maximum(btp + bfp, 1), np.nan))
            boot["r"].append(np.where(has, btp / np.maximum(bpos, 1), np.nan))
        boot["f1"].append(np.where(has, f1, np.nan))
        boot["ap"].append(bap)
    B = {k: np.concatenate(v) if v else np.zeros((0, len(labels))) for k, v in boot.items()}
    f1 = _f1(tp, fp, fn)
    present = pos > 0
    per_label = {}
    for k, lab in enumerate(labels):
        per_label[lab] = {
            "support": int(pos[k]),
            "predicted": int(tp[k] + fp[k]),
            "precision": float(tp[k] / (tp[k] + fp[k])) if tp[k] + fp[k] else None,
            "precision_ci": _ci(B["p"][:, k]) if len(B["p"]) else None,
            "recall": float(tp[k] / pos[k]) if pos[k] else None,
            "recall_ci": _ci(B["r"][:, k]) if len(B["r"]) else None,
            "f1": float(f1[k]) if pos[k] else None,
            "f1_ci": _ci(B["f1"][:, k]) if len(B["f1"]) else None,
            "ap": float(ap[k]) if pos[k] else None,
            "ap_ci": _ci(B["ap"][:, k]) if len(B["ap"]) else None,
            "threshold": float(thr[k]),
            "temperature": float(state["temperature"][k]),
            "ece_before": _binary_ece(sigmoid(Z[:, k]), y[:, k]),
            "ece_after": _binary_ece(S[:, k], y[:, k]),
        }
    exact = int((pred == y).all(axis=1).sum())
    # Per item, the F1 of its predicted label set against its true set (1 when both are empty): what auto
    # pairs across strategies (headstart.shapes.auto), item by item.
    hits, sizes = (pred & y).sum(1), pred.sum(1) + y.sum(1)
    item_f1 = np.where(sizes > 0, 2 * hits / np.maximum(sizes, 1), 1.0)
    return {
        "n": n,
        "map": float(np.nanmean(ap)) if present.any() else None,
        "map_ci": _ci(B["map"]),
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "micro_f1_ci": _ci(B["micro"]),
        "macro_f1": float(np.nanmean(f1[present])) if present.any() else None,
        "macro_f1_ci": _ci(B["macro"]),
        "subset_accuracy": exact / n if n else None,
        "subset_accuracy_ci": list(wilson(exact, n)),
        "labels_scored": int(present.sum()),
        "per_label": per_label,
        "ece_before": _mean([v["ece_before"] for v in per_label.values()]),
        "ece_after": _mean([v["ece_after"] for v in per_label.values()]),
        "interval": "95%: item bootstrap x1000 (Wilson for subset accuracy)",
        "item_scores": item_f1.tolist(),
    }


def _mean(values: list[float]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None
