"""Labels saved by `headstart suggest`: a simulated labeling loop, suggested picks against random ones.

Per task and seed: the data's items are split (stratified, seeded) into a pool (2/3, the items one could
label) and a test set (1/3). The probe's regularisation C is chosen once, by `fit_head`'s 5-fold CV on the
whole labeled pool, and kept fixed; the target is the test accuracy of the probe fitted on the whole pool
at that C, minus TOLERANCE (one point). The loop starts from 2 labels per class (seeded random, the same
start for every strategy), then each round fits the probe (`fit_head`, fixed C) on the labels so far,
scores it on the test set, and adds K (one label per class, or 1/25 of the pool if more), chosen from
the rest of the pool by the strategy (`headstart.explore.suggest.select` on the probe's probabilities;
the oracle gives their labels).
"Labels needed" is the label count of the first round whose test accuracy reaches the target (the whole
pool when it never does: at the whole pool the probe *is* the full-data probe, so the full loop always
ends there or above).

Strategies: margin-diverse (the suggest default), margin-kcenter, margin, random. Reported per task:
labels needed by each (mean over seeds with a 95 % t interval), the ratio suggest/random
(`labels_ratio_vs_random`; the issue's goal: <= 0.5 on at least two tasks), and the mean accuracy curves.

Tasks: emoji (examples/emoji/images, 360 images, 9 classes, efficientnet_lite0) and fortunes
(examples/fortunes/fortunes.csv, 360 texts, 6 classes, minilm-l6); the full run adds digits (scikit-learn's
1,797 handwritten digits, built with examples/build_digits.py, efficientnet_lite0). Embeddings come from
`embed_dataset` with a fresh HEADSTART_CACHE.

    .venv/bin/python benchmarks/suggest.py           # 3 tasks x 5 seeds
    .venv/bin/python benchmarks/suggest.py --quick   # emoji and fortunes x 2 seeds; < 5 min

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import EMOJI_ROOT, REPO, cpu_model, emit_json, isolated_cache, machine_load, rnd

KEYS = ("labels_ratio_vs_random", "tasks", "cpu", "quick", "seeds", "tolerance", "total_s")
STRATEGIES = ("margin-diverse", "margin-kcenter", "margin", "random")
SUGGEST = "margin-diverse"
TOLERANCE = 0.01  # the target: the full-pool probe's test accuracy minus one point
START_PER_CLASS = 2
ROUNDS = 25  # K per round: one label per class, or the pool / ROUNDS when that is more (digits: 47)


def _tasks(root: Path, quick: bool) -> dict[str, tuple[Path, str]]:
    tasks = {
        "emoji": (EMOJI_ROOT, "efficientnet_lite0"),
        "fortunes": (REPO / "examples" / "fortunes" / "fortunes.csv", "minilm-l6"),
    }
    if not quick:
        sys.path.insert(0, str(REPO / "examples"))
        from build_digits import build

        build(root / "digits")
        tasks["digits"] = (root / "digits", "efficientnet_lite0")
    return tasks


def _loop(
    X: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    start: np.ndarray,
    C: float,
    strategy: str,
    seed: int,
) -> list[tuple[int, float]]:
    """(labels, test accuracy) of each round, from `start` until the pool is spent."""
    from headstart.explore.suggest import fresh_candidates, select
    from headstart.head import fit_head

    n_classes = int(y.max()) + 1
    labeled = list(start)
    rest = np.setdiff1d(pool, start)
    curve = []
    for rnd_i in range(10_000):
        head = fit_head(X[labeled], y[labeled], n_classes, Cs=(C,))[0]
        curve.append((len(labeled), float((head.proba(X[test]).argmax(1) == y[test]).mean())))
        k = min(max(n_classes, len(pool) // ROUNDS), len(fresh_candidates(X[rest], X[labeled])))
        if k == 0:
            break
        picks = select(
            X[rest], head.proba(X[rest]), k, labeled=X[labeled], strategy=strategy, seed=seed * 10_000 + rnd_i
        )
        chosen = rest[[p.index for p in picks]]
        labeled += chosen.tolist()
        rest = np.setdiff1d(rest, chosen)
    return curve


def _needed(curve: list[tuple[int, float]], target: float, pool_size: int) -> int:
    return next((n for n, acc in curve if acc >= target - 1e-9), pool_size)


def _one_seed(X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    from headstart.head import fit_head, stratified_folds

    n_classes = int(y.max()) + 1
    test = stratified_folds(y, 3, seed)[0]
    pool = np.setdiff1d(np.arange(len(y)), test)
    _, C, _ = fit_head(X[pool], y[pool], n_classes, seed=seed)  # 5-fold CV on the whole pool, once
    full = fit_head(X[pool], y[pool], n_classes, Cs=(C,))[0]
    full_acc = float((full.proba(X[test]).argmax(1) == y[test]).mean())
    rng = np.random.default_rng(seed)
    start = np.concatenate(
        [rng.choice(pool[y[pool] == c], START_PER_CLASS, replace=False) for c in range(n_classes)]
    )
    out: dict[str, Any] = {"seed": seed, "C": C, "full_acc": full_acc, "pool": len(pool), "test": len(test)}
    for s in STRATEGIES:
        curve = _loop(X, y, pool, test, start, C, s, seed)
        out[s] = {"curve": curve, "needed": _needed(curve, full_acc - TOLERANCE, len(pool))}
    return out


def _t_interval(values: list[float]) -> tuple[float, float, float]:
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _mean_curve(runs: list[dict[str, Any]], strategy: str) -> list[tuple[int, float]]:
    """Mean accuracy at each label count every seed reached (curves share their label counts by round)."""
    length = min(len(r[strategy]["curve"]) for r in runs)
    return [
        (runs[0][strategy]["curve"][i][0], float(np.mean([r[strategy]["curve"][i][1] for r in runs])))
        for i in range(length)
    ]


def _task(name: str, data: Path, backbone: str, seeds: int) -> dict[str, Any]:
    from headstart.explore.embedded import embed_dataset

    t0 = time.perf_counter()
    ed = embed_dataset(data, backbone, progress=False)
    X, y = ed.X, ed.y
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs = [_one_seed(X, y, s) for s in range(seeds)]
    loop_s = time.perf_counter() - t0
    needed = {s: [r[s]["needed"] for r in runs] for s in STRATEGIES}
    stats = {s: _t_interval(needed[s]) for s in STRATEGIES}
    ratio = stats[SUGGEST][0] / stats["random"][0]
    full = _t_interval([r["full_acc"] for r in runs])
    print(
        f"\n{name}: {len(y)} items, {len(ed.classes)} classes, {backbone}; pool {runs[0]['pool']}, "
        f"test {runs[0]['test']}; embedded in {embed_s:.0f} s, loops {loop_s:.0f} s"
    )
    print(
        f"  full-pool probe test accuracy {full[0]:.3f} (mean of {seeds} seeds); "
        f"target = it - {TOLERANCE:.2f}"
    )
    for s in STRATEGIES:
        m, lo, hi = stats[s]
        print(f"  labels to reach the target, {s:>14}: {m:6.1f} [{lo:.1f}, {hi:.1f}]  per seed {needed[s]}")
    print(f"  {SUGGEST} / random labels: {ratio:.2f} (goal <= 0.5)")
    curves = {s: _mean_curve(runs, s) for s in STRATEGIES}
    step = max(1, len(curves["random"]) // 10)
    print("  mean test accuracy by labels: " + "  ".join(STRATEGIES))
    for i in range(0, len(curves["random"]), step):
        print(f"    {curves['random'][i][0]:5d}  " + "  ".join(f"{curves[s][i][1]:.3f}" for s in STRATEGIES))
    return {
        "backbone": backbone,
        "n_items": len(y),
        "n_classes": len(ed.classes),
        "pool": runs[0]["pool"],
        "full_acc": rnd(full[0], 4),
        "labels_needed": {s: [rnd(v, 1) for v in stats[s]] for s in STRATEGIES},
        "labels_needed_per_seed": needed,
        "labels_ratio_vs_random": rnd(ratio, 3),
        "margin_ratio_vs_random": rnd(stats["margin"][0] / stats["random"][0], 3),
        "curves": {s: [[n, rnd(a, 4)] for n, a in curves[s]] for s in STRATEGIES},
        "embed_s": rnd(embed_s, 1),
        "loop_s": rnd(loop_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="emoji and fortunes, 2 seeds; under 5 minutes")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per task (default 5; quick 2)")
    args = ap.parse_args()
    seeds = args.seeds or (2 if args.quick else 5)
    t_start = time.perf_counter()
    print(f"suggest benchmark ({'quick' if args.quick else 'full'}), {seeds} seeds; {machine_load()}")
    print(f"  cpu: {cpu_model()}")
    with isolated_cache("headstart-bench-suggest-") as root:
        results = {name: _task(name, d, bb, seeds) for name, (d, bb) in _tasks(root, args.quick).items()}
    ratios = {name: r["labels_ratio_vs_random"] for name, r in results.items()}
    met = [name for name, r in ratios.items() if r <= 0.5]
    mean_ratio = float(np.mean(list(ratios.values())))
    total = time.perf_counter() - t_start
    print(
        "\nsuggest/random labels to the full-data accuracy: "
        + ", ".join(f"{n} {r:.2f}" for n, r in ratios.items())
        + f"; mean {mean_ratio:.2f}. Goal (<= 0.5 on two tasks): {'met' if len(met) >= 2 else 'NOT met'} "
        f"({', '.join(met) or 'none'})"
    )
    print(f"  total wall time {total:.0f} s; {machine_load()}")
    emit_json(
        {
            "labels_ratio_vs_random": {**ratios, "mean": rnd(mean_ratio, 3)},
            "goal_met": len(met) >= 2,
            "tasks": results,
            "cpu": cpu_model(),
            "quick": bool(args.quick),
            "seeds": seeds,
            "tolerance": TOLERANCE,
            "total_s": rnd(total, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
