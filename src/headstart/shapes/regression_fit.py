"""The regression probe's arithmetic: ridge on cached embeddings, a split-conformal interval, the scores.

- **Ridge, strength by k-fold cross-validation on train.** Features are standardised as the linear head's
  are (headstart.head: near-constant channels left out), the target too (its mean and scale kept), so one
  grid of strengths fits every dataset. Each fold is solved in closed form for the whole grid at once from
  one eigendecomposition: of the d x d covariance when there are more items than features, else of the
  n x n Gram matrix, so N in the thousands and D up to 1024 stay a few seconds. The chosen strength is
  refit on all of train and both standardisations are folded into a plain `value = x @ w + b` head.
- **Split-conformal interval** (Vovk et al. 2005; Lei et al., JASA 2018): the ceil((n+1)(1-a))-th
  smallest absolute residual on val, `q`, makes [v - q, v + q] cover a new item's value with probability
  at least 1 - a whenever val and the new item are exchangeable. It needs n >= 1/a - 1 val items (9 for
  90 %); with fewer, no interval is given rather than a wrong one.
- **Scores**: MAE, RMSE and R^2 with percentile bootstrap 95 % intervals over items; the train mean as a
  baseline, compared on the same resamples (a paired difference: a tie when its interval holds 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from headstart.head import LinearHead
from headstart.intervals import bootstrap_indices, wilson

#: Per-item ridge strengths tried (the penalty is lambda * n * |w|^2 on standardised features and target).
LAMBDAS: tuple[float, ...] = tuple(float(x) for x in 10.0 ** np.arange(-6.0, 3.01, 0.5))
CV_FOLDS = 5
#: The conformal interval's target coverage.
COVERAGE = 0.9


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(standardised X in float64, mean, the multiplier per feature: 1/sd, 0 for dropped channels), as the
    linear head standardises (headstart.head._Standardiser: the same floor and dropped channels)."""
    from headstart.head import _Standardiser

    std = _Standardiser(X)
    mult = std.keep / std.sd
    return (X - std.mu) * mult, std.mu.astype(np.float64), mult.astype(np.float64)


def _path_predictions(Z: np.ndarray, y: np.ndarray, Z_out: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Ridge predictions on Z_out for every penalty in `alphas` (summed loss |y - Zw - b|^2 + a|w|^2),
    fitted on (Z, y) with an unpenalised intercept: (len(Z_out), len(alphas))."""
    mz, my = Z.mean(axis=0), y.mean()
    Zc, yc = Z - mz, y - my
    if Zc.shape[0] >= Zc.shape[1]:  # primal: eigh of the d x d covariance
        e, Q = np.linalg.eigh(Zc.T @ Zc)
        P, r = (Z_out - mz) @ Q, Q.T @ (Zc.T @ yc)
    else:  # dual: eigh of the n x n Gram matrix, w = Zc^T (K + a)^-1 y
        e, Q = np.linalg.eigh(Zc @ Zc.T)
        P, r = (Z_out - mz) @ Zc.T @ Q, Q.T @ yc
    e = np.maximum(e, 0.0)
    return P @ (r[:, None] / (e[:, None] + alphas[None, :])) + my


def _solve(Z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """The ridge weights on centred (Z, y) at penalty `alpha`."""
    n, d = Z.shape
    if n >= d:
        return np.linalg.solve(Z.T @ Z + alpha * np.eye(d), Z.T @ y)
    return Z.T @ np.linalg.solve(Z @ Z.T + alpha * np.eye(n), y)


def cv_folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    """Held-out indices of k seeded random folds of n items."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[f::k]) for f in range(k)]


def choose_lambda(
    Z: np.ndarray, y: np.ndarray, *, seed: int, lambdas: tuple[float, ...] = LAMBDAS, folds: int = CV_FOLDS
) -> tuple[float, dict[float, float]]:
    """The per-item strength with the lowest k-fold CV mean squared error on (Z, y), and {lambda: CV MSE}.
    Ties go to the stronger penalty. With too few items to hold any out, the middle of the grid."""
    n = len(y)
    k = min(folds, n // 2)
    if k < 2:
        mid = lambdas[len(lambdas) // 2]
        return mid, {}
    lam = np.asarray(lambdas, dtype=np.float64)
    sse = np.zeros(len(lam))
    for held in cv_folds(n, k, seed):
        train = np.setdiff1d(np.arange(n), held)
        pred = _path_predictions(Z[train], y[train], Z[held], lam * len(train))
        sse += ((pred - y[held][:, None]) ** 2).sum(axis=0)
    mse = sse / n
    best = min(range(len(lam)), key=lambda i: (round(float(mse[i]), 12), -i))
    return float(lam[best]), {float(a): float(m) for a, m in zip(lam, mse, strict=True)}


def fit_ridge(
    X: np.ndarray, y: np.ndarray, *, seed: int = 0, C: float | None = None
) -> tuple[LinearHead, dict[str, Any]]:
    """The ridge head on embeddings X (N, D) for targets y (N,): strength by CV (or 1/C, as the linear
    head's C: penalty |w|^2 / C on the summed loss over standardised features), refit on all of X.
    Returns (a one-output head giving the value itself, its state: target mean/scale, lambda, CV curve)."""
    X64 = np.asarray(X, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    y_mean, y_scale = float(y64.mean()), float(y64.std())
    if not y_scale > 0:  # one value throughout: predict it (nothing to learn, nothing to divide by)
        head = LinearHead(np.zeros((1, X64.shape[1]), np.float32), np.array([y_mean], np.float32))
        return head, {"target_mean": y_mean, "target_scale": 0.0, "lambda": None, "cv_mse": {}}
    Z, mu, mult = _standardise(X64)
    t = (y64 - y_mean) / y_scale
    if C is not None:
        lam, curve = 1.0 / (C * len(t)), {}
    else:
        lam, curve = choose_lambda(Z, t, seed=seed)
    w_std = _solve(Z - Z.mean(axis=0), t - t.mean(), lam * len(t))
    b_std = t.mean() - Z.mean(axis=0) @ w_std
    # value = y_mean + y_scale * ((x - mu) * mult @ w_std + b_std): fold into x @ w + b.
    w = y_scale * mult * w_std
    b = y_mean + y_scale * (b_std - (mu * mult) @ w_std)
    head = LinearHead(weight=w[None, :].astype(np.float32), bias=np.array([b], dtype=np.float32))
    state = {
        "target_mean": y_mean,
        "target_scale": y_scale,
        "lambda": lam,
        "alpha": lam * len(t),
        "C": 1.0 / (lam * len(t)),
        "cv_folds": min(CV_FOLDS, len(t) // 2) if C is None else 0,
        "cv_mse": curve,  # in units of the standardised target: 1.0 is the mean's
    }
    return head, state


def conformal_halfwidth(residuals: np.ndarray, coverage: float = COVERAGE) -> tuple[float | None, str]:
    """(q, why not): the split-conformal half-width from absolute residuals on held-out items, or None
    with the reason when there are too few of them for `coverage`."""
    r = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    n = len(r)
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        need = math.ceil(coverage / (1 - coverage) - 1e-9)
        return None, f"val has {n} item(s); a {coverage:.0%} conformal interval needs at least {need}"
    return float(r[rank - 1]), ""


def _boot(y: np.ndarray, yhat: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """MAE, RMSE and R^2 of each resample (rows of idx)."""
    yt, err = y[idx], (yhat - y)[idx]
    sst = ((yt - yt.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    sse = (err**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1 - sse / sst, np.nan)
    return {"mae": np.abs(err).mean(axis=1), "rmse": np.sqrt(sse / idx.shape[1]), "r2": r2}


def _ci(values: np.ndarray) -> list[float | None]:
    if not np.isfinite(values).any():
        return [None, None]
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def scores(y: np.ndarray, yhat: np.ndarray) -> dict[str, float | None]:
    """MAE, RMSE, R^2 (None when the values do not vary) of predictions yhat for targets y."""
    y, yhat = np.asarray(y, np.float64), np.asarray(yhat, np.float64)
    out = _boot(y, yhat, np.arange(len(y))[None, :])
    r2 = float(out["r2"][0])
    return {
        "mae": float(out["mae"][0]),
        "rmse": float(out["rmse"][0]),
        "r2": r2 if math.isfinite(r2) else None,
    }


def regression_metrics(
    y: np.ndarray,
    yhat: np.ndarray,
    *,
    baseline: float,
    halfwidth: float | None,
    seed: int = 0,
    coverage: float = COVERAGE,
) -> dict[str, Any]:
    """Every score on one split with its 95 % interval: MAE, RMSE, R^2 (item bootstrap), the baseline that
    predicts `baseline` (the train mean) on the same resamples with the paired differences, and how often
    the conformal interval [v - halfwidth, v + halfwidth] held the true value (Wilson interval)."""
    y, yhat = np.asarray(y, np.float64), np.asarray(yhat, np.float64)
    n = len(y)
    if n == 0:
        return {"n": 0}
    base = np.full(n, float(baseline))
    idx = bootstrap_indices(n, seed=seed)
    model_b, base_b = _boot(y, yhat, idx), _boot(y, base, idx)
    out: dict[str, Any] = {"n": n}
    point, base_point = scores(y, yhat), scores(y, base)
    for k in ("mae", "rmse", "r2"):
        out[k], out[f"{k}_ci"] = point[k], _ci(model_b[k])
    vs: dict[str, Any] = {}
    for k in ("mae", "rmse"):
        diff = model_b[k] - base_b[k]  # the same resamples: paired
        ci = _ci(diff)
        tie = ci[0] is None or (ci[0] <= 0 <= ci[1])  # type: ignore[operator]
        d = float(point[k] - base_point[k])  # type: ignore[operator]
        vs[k] = {"diff": d, "ci": ci, "tie": bool(tie), "better": bool(not tie and d < 0)}
    out["baseline"] = {
        "value": float(baseline),
        "mae": base_point["mae"],
        "mae_ci": _ci(base_b["mae"]),
        "rmse": base_point["rmse"],
        "rmse_ci": _ci(base_b["rmse"]),
        "r2": base_point["r2"],
    }
    out["vs_baseline"] = vs
    if halfwidth is not None:
        hit = int((np.abs(y - yhat) <= halfwidth).sum())
        out["coverage"] = {
            "target": coverage,
            "rate": hit / n,
            "ci": list(wilson(hit, n)),
            "halfwidth": float(halfwidth),
        }
    out["interval"] = "95%: item bootstrap x1000 (MAE, RMSE, R2, paired vs baseline); Wilson (coverage)"
    return out
