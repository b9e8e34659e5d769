"""Uncertainty of every score: 95 % intervals for one model, paired tests for two on the same items.

Which interval, and why:
- **Accuracy: Wilson score interval.** Accuracy is a proportion of n independent items; Wilson's interval
  keeps close to its nominal coverage down to a few dozen items and near 0 or 1, where the normal
  (Wald) interval collapses to zero width (Brown, Cai & DasGupta, Statistical Science 2001). It is closed
  form: no resampling noise, the same every run.
- **Macro-F1 and balanced accuracy: percentile bootstrap over items** (1,000 resamples, seeded, the same
  resamples for both). Neither has a closed form; the bootstrap resamples items exactly as a new test set
  of the same size would, class counts included. (Averaging per-class Wilson bounds is no interval of the
  mean: it ignores that the classes' errors partly cancel, and is too wide by about sqrt(K).)
- **Two models on the same items: exact McNemar test** (binomial test on the items only one of them got
  right) decides; the difference in accuracy is shown with a **paired bootstrap** interval. Pairing
  removes the items' shared difficulty, so it separates two models far sooner than two unpaired
  intervals would. Compared by balanced accuracy (skewed classes), each item weighs by the inverse of its
  class's count and the exact test becomes its weighted twin: a sign-flip test on the discordant items
  (exact up to 16 of them, else 20,000 seeded flips); with equal weights it is McNemar's exact test.
  Several challengers against one reference are Holm-corrected, so trying five
  fine-tunes does not give five chances to win by luck.
- **Two models' likelihoods on the same items** (`paired_likelihood`): the mean per-item gain in
  log-likelihood with a paired bootstrap interval and the sign-flip test on the per-item differences.
  Fed tempered NLLs (each model's logits over one temperature fitted on the items:
  calibration.tempered_nll), it compares how well the two rank the true class, their confidence scales
  aside, and every item carries evidence, not only the discordant ones: compare's selection rule.
- **Two accuracies on different items** (a slice against the rest, or two test sets): Newcombe's interval
  for the difference and Fisher's exact test (`unpaired_difference`; used by `headstart.slices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
ALPHA = 0.05
N_BOOT = 1000
#: Per-item likelihood differences below this (nats: a likelihood ratio within 0.01 %) are float rounding,
#: not evidence. A fine-tune that kept the probe's head scores its val items through another forward than
#: the probe's cached features, and the 1e-7 nats between them once made a sign-flip p of 0.2 out of noise.
LIKELIHOOD_TIE = 1e-4


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `correct` successes in `n` trials; (nan, nan) when n == 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    """Confusion matrices of each bootstrap resample: idx is (B, n) item indices -> (B, k, k)."""
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * k * k + y_true[idx] * k + y_pred[idx]).ravel()
    return np.bincount(flat, minlength=b * k * k).reshape(b, k, k)


def macro_f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 over the classes present (support > 0) of one (k, k) or many (B, k, k) confusion matrices."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    present = support > 0
    return np.where(present.any(-1), (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1), np.nan)


def balanced_accuracy_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present of one (k, k) or many (B, k, k) confusion matrices."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    present = support > 0
    recall = np.where(present, tp / np.maximum(support, 1), 0.0)
    return np.where(present.any(-1), recall.sum(-1) / np.maximum(present.sum(-1), 1), np.nan)


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _bootstrap_scores(t: np.ndarray, p: np.ndarray, n_classes: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, 2): macro-F1 and balanced accuracy of each item resample."""
    idx = bootstrap_indices(len(t), n_boot, seed)
    out = []
    # In chunks of 100 resamples: (100, n) indices and (100, k, k) counts stay small for large test sets.
    for i in range(0, n_boot, 100):
        cm = _confusions(t, p, n_classes, idx[i : i + 100])
        out.append(np.stack([macro_f1_from_confusion(cm), balanced_accuracy_from_confusion(cm)], axis=1))
    return np.concatenate(out)


def _interval(
    y_true: Sequence[int], y_pred: Sequence[int], n_classes: int, n_boot: int, seed: int, col: int
) -> tuple[float, float]:
    """Percentile bootstrap of column `col` of _bootstrap_scores (0: macro-F1, 1: balanced accuracy)."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(t) == 0:
        return (float("nan"), float("nan"))
    return _percentiles(_bootstrap_scores(t, p, n_classes, n_boot, seed)[:, col])


def _percentiles(scores: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(scores, [2.5, 97.5])
    return (float(lo), float(hi))


def macro_f1_interval(
    y_true: Sequence[int], y_pred: Sequence[int], n_classes: int, *, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap (2.5 %, 97.5 %) of macro-F1 over items."""
    return _interval(y_true, y_pred, n_classes, n_boot, seed, 0)


def balanced_accuracy_interval(
    y_true: Sequence[int], y_pred: Sequence[int], n_classes: int, *, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap (2.5 %, 97.5 %) of balanced accuracy (mean per-class recall) over items."""
    return _interval(y_true, y_pred, n_classes, n_boot, seed, 1)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant items (1.0 when there are none)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


EXACT_FLIPS = 16  # discordant items up to which the weighted sign-flip test enumerates every sign
N_FLIPS = 20_000


def weighted_sign_test(d: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value that the weighted paired differences `d` (one per item, 0 where a and b agree)
    are symmetric about 0: every discordant item's sign flips with probability 1/2 under the null.
    With equal weights this is the exact McNemar test."""
    w = np.abs(np.asarray(d, dtype=float))
    w = w[w > 0]
    if not len(w):
        return 1.0
    if np.allclose(w, w[0]):  # equal weights: the exact binomial test on the discordant items (McNemar's)
        from scipy.stats import binomtest

        return float(binomtest(int((np.asarray(d) > 0).sum()), len(w), 0.5).pvalue)
    observed = abs(float(np.asarray(d, dtype=float).sum())) * (1 - 1e-9)  # ties count as extreme
    if len(w) <= EXACT_FLIPS:  # every sign pattern, the observed one among them: p is never 0
        signs = 1 - 2 * ((np.arange(2 ** len(w))[:, None] >> np.arange(len(w))) & 1)
        return float(np.mean(np.abs(signs @ w) >= observed))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(N_FLIPS, len(w)))
    # A sampled p counts the observed pattern too (Phipson & Smyth 2010): at least 1 / (N_FLIPS + 1), not 0
    return float((np.sum(np.abs(signs @ w) >= observed) + 1) / (N_FLIPS + 1))


def _paired_mean(
    d: np.ndarray, weights: Sequence[float] | None, n_boot: int, seed: int
) -> tuple[np.ndarray, float, list[float]]:
    """Per-item differences (weighted where asked), their mean, and its paired bootstrap 95 % interval."""
    if weights is not None:
        d = d * np.asarray(weights, dtype=float)
    boot = d[bootstrap_indices(len(d), n_boot, seed)].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return d, float(d.mean()), [float(lo), float(hi)]


def paired_difference(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    *,
    weights: Sequence[float] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy of a minus accuracy of b on the same items: the difference, its paired bootstrap 95 %
    interval, the exact McNemar p-value and the discordant counts. With per-item `weights` (mean 1, e.g.
    headstart.imbalance.item_weights: balanced accuracy), the weighted difference and the weighted
    sign-flip test instead."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    n = len(a)
    if n == 0:
        nan = float("nan")
        return {"diff": nan, "ci": [nan, nan], "p": 1.0, "n": 0, "only_a": 0, "only_b": 0}
    d, diff, ci = _paired_mean(a.astype(np.int8) - b.astype(np.int8), weights, n_boot, seed)
    return {
        "diff": diff,
        "ci": ci,
        "p": mcnemar_exact(a, b) if weights is None else weighted_sign_test(d, seed),
        "n": n,
        "only_a": int((a & ~b).sum()),
        "only_b": int((~a & b).sum()),
    }


def paired_likelihood(
    a_nll: Sequence[float],
    b_nll: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """How much more likely a makes the true labels than b on the same items: the mean per-item gain in
    log-likelihood (b's NLL minus a's, nats; with `weights`, weighted), its paired bootstrap 95 % interval,
    and the two-sided sign-flip p-value. Every item counts, not only those one model alone got right, so it
    separates two models sooner than McNemar's test (give it tempered NLLs: calibration.tempered_nll).
    `informative`: the items where the two differ by LIKELIHOOD_TIE or more; the others are ties."""
    a, b = np.asarray(a_nll, dtype=float), np.asarray(b_nll, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired likelihoods need the same items: {a.shape} vs {b.shape}")
    n = len(a)
    if n == 0:
        return {"gain": float("nan"), "ci": [float("nan")] * 2, "p": 1.0, "n": 0, "informative": 0}
    diff = b - a
    diff[np.abs(diff) < LIKELIHOOD_TIE] = 0.0
    d, gain, ci = _paired_mean(diff, weights, n_boot, seed)
    return {
        "gain": gain,
        "ci": ci,
        "p": weighted_sign_test(d, seed),
        "n": n,
        "informative": int((d != 0).sum()),
    }


def paired_verdict(d: dict[str, Any]) -> str:
    """'better' / 'worse' (a beside b) beyond noise at ALPHA, else 'tie', for one paired_difference."""
    if not d.get("n") or d["p"] >= ALPHA:
        return "tie"
    return "better" if d["diff"] > 0 else "worse"


def holm(pvalues: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), for several tests against one reference.

    `weights` (positive, fixed before the outcomes are seen): the weighted Holm procedure (Holm 1979), which
    spends the level on each test in proportion to its weight; equal weights give the plain procedure.
    Step k of the tests sorted by p/w rejects while p_k <= alpha * w_k / (sum of the weights still in)."""
    p = np.asarray(pvalues, dtype=float)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
    if len(w) != len(p) or (w <= 0).any():
        raise ValueError("holm: one positive weight per p-value")
    order = np.argsort(p / w, kind="stable")
    left = np.cumsum(w[order][::-1])[::-1]  # the weights still in at each step
    adjusted = np.empty(len(p))
    running = 0.0
    for i, remaining in zip(order, left, strict=True):
        running = max(running, min(1.0, remaining * p[i] / w[i]))
        adjusted[i] = running
    return adjusted.tolist()


def score_intervals(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> dict[str, Any]:
    """The intervals that go with an accuracy, a macro-F1 and a balanced accuracy on these items."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = len(t)
    nan = (float("nan"), float("nan"))
    boot = _bootstrap_scores(t, p, n_classes, N_BOOT, 0) if n else None
    return {
        "accuracy_ci": list(wilson(int((t == p).sum()), n)),
        "macro_f1_ci": list(_percentiles(boot[:, 0]) if boot is not None else nan),
        "balanced_accuracy_ci": list(_percentiles(boot[:, 1]) if boot is not None else nan),
        "interval": "95%: Wilson (accuracy), item bootstrap x1000 (macro-F1, balanced accuracy)",
    }


def fmt_ci(value: float | None, ci: Sequence[float] | None, pct: bool = False) -> str:
    """'0.704 [0.57, 0.81]' (or percentages): how every score with its interval is printed."""
    if value is None:
        return "-"
    if not ci or any(c is None or c != c for c in ci):
        return f"{value:.1%}" if pct else f"{value:.3f}"
    if pct:
        return f"{value:.1%} [{ci[0]:.0%}, {ci[1]:.0%}]"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def items_to_settle(diff: float, ci: Sequence[float], n: int) -> int | None:
    """Roughly how many paired items would make an observed difference `diff` (95 % interval `ci` on `n`
    items) significant, assuming the difference stays as observed: the interval narrows as 1/sqrt(n)."""
    half = (ci[1] - ci[0]) / 2
    if not diff or half <= 0 or n <= 0:
        return None
    return int(np.ceil(n * (half / abs(diff)) ** 2))


def unpaired_difference(correct_a: int, n_a: int, correct_b: int, n_b: int) -> dict[str, Any]:
    """Accuracy of a minus accuracy of b on different items (two slices, or two test sets): the difference,
    Newcombe's hybrid score 95 % interval (from the two Wilson intervals, so it keeps its coverage at small
    n and near 0 or 1; Newcombe, Statistics in Medicine 1998) and Fisher's exact two-sided p-value."""
    from scipy.stats import fisher_exact

    if n_a <= 0 or n_b <= 0:
        nan = float("nan")
        return {"diff": nan, "ci": [nan, nan], "p": 1.0, "n_a": n_a, "n_b": n_b}
    pa, pb = correct_a / n_a, correct_b / n_b
    (la, ua), (lb, ub) = wilson(correct_a, n_a), wilson(correct_b, n_b)
    d = pa - pb
    lo = d - np.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = d + np.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    p = fisher_exact([[correct_a, n_a - correct_a], [correct_b, n_b - correct_b]]).pvalue
    return {"diff": float(d), "ci": [float(lo), float(hi)], "p": float(p), "n_a": n_a, "n_b": n_b}
