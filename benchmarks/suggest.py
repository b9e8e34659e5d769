"""Labels saved by `headstart suggest`: a simulated labeling loop, suggested picks against random ones.

Per task and seed: the data's items are split (stratified, seeded) into a pool (2/3, the items one could
label) and a test set (1/3). The target is the test accuracy of the probe fitted on the whole pool (C by
`fit_head`'s 5-fold CV, as `headstart probe` chooses it) minus TOLERANCE (one point). The loop starts
from 2 labels per class (seeded random, the same start for every strategy), then each round fits the
probe on the labels so far with C chosen again by CV on them (a C fixed for the whole pool over-fits
or over-regularises the early rounds), scores it on the test set, and adds K (one label per class, or
1/25 of the pool if more), chosen from the rest of the pool by the strategy
(`headstart.explore.suggest.select` on the probe's probabilities; the oracle gives their labels).
"Labels needed" is the label count of the first round whose test accuracy reaches the target; the loop
stops there (the whole pool when it never does: at the whole pool the probe *is* the full-data probe).

Strategies: typical-margin, margin-diverse, badge, margin, random (margin-kcenter, selectable, lost to
margin-diverse on every task of the earlier table and is left out for time). Reported per task: labels
needed by each (mean over seeds with a 95 % t interval), the ratio of the suggest default to random
(`labels_ratio_vs_random`; the issue's goal: <= 0.5 on at least two tasks) and of every strategy, and the
mean accuracy of the first rounds.

Tasks: emoji (examples/emoji/images, 360 images, 9 classes, efficientnet_lite0), fortunes
(examples/fortunes/fortunes.csv, 360 texts, 6 classes, minilm-l6); the full run adds larger pools:
digits (scikit-learn's 1,797 digits, examples/build_digits.py, efficientnet_lite0; `digits_multi_depth`:
the same through `depths:efficientnet_lite0`, the features compare recommends there), fashion_mnist (2,500
Fashion-MNIST training images, 250 per class, examples/build_fashion_mnist.py; needs the Debian package
dataset-fashion-mnist, else skipped), fortunes_810 (every fortune of the six files up to 150 per class,
examples/build_fortunes.py; needs the Debian package fortunes, else skipped) and emoji_full (every usable
emoji of each Unicode group up to 250 per group, ~1,600 images, examples/emoji/build.py; needs the Debian
packages fonts-noto-color-emoji and unicode-data, else skipped). Embeddings come from
`embed_dataset`, in a fresh HEADSTART_CACHE unless --cache names one to keep (a rerun then skips the
~3 minutes of embedding).

    .venv/bin/python benchmarks/suggest.py           # 7 tasks x 5 seeds (over an hour on 2 cores)
    .venv/bin/python benchmarks/suggest.py --quick   # emoji and fortunes x 2 seeds; < 5 min
    .venv/bin/python benchmarks/suggest.py --tasks fashion_mnist,digits --cache /tmp/hs-cache

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import EMOJI_ROOT, REPO, cpu_model, emit_json, isolated_cache, machine_load, rnd

KEYS = ("labels_ratio_vs_random", "tasks", "cpu", "quick", "seeds", "tolerance", "total_s")
STRATEGIES = ("typical-margin", "margin-diverse", "badge", "margin", "random")
TOLERANCE = 0.01  # the target: the full-pool probe's test accuracy minus one point
START_PER_CLASS = 2
ROUNDS = 25  # K per round: one label per class, or the pool / ROUNDS when that is more (digits: 47)
QUICK_TASKS = ("emoji", "fortunes")


def _build(name: str, root: Path) -> Path | str:
    """The data of a built task (a path), or why it is skipped (a str)."""
    sys.path.insert(0, str(REPO / "examples"))
    try:
        if name == "digits":
            from build_digits import build

            build(root / name)
            return root / name
        if name == "emoji_full":  # every usable emoji of each group, up to 250: ~1,800 images
            sys.path.insert(0, str(REPO / "examples" / "emoji"))
            from build import main as build_emoji

            build_emoji(["--out", str(root / name), "--per-class", "250"])
            return root / name
        if name == "fashion_mnist":
            from build_fashion_mnist import build as build_fashion

            build_fashion(root / name, per_class=250, seed=0)
            return root / name
        from build_fortunes import build as build_fortunes

        build_fortunes(root / "fortunes_810.csv", per_class=150, seed=0)
        return root / "fortunes_810.csv"
    except (FileNotFoundError, SystemExit) as e:
        return str(e)


TASKS: dict[str, tuple[Callable[[Path], Path | str], str]] = {
    "emoji": (lambda root: EMOJI_ROOT, "efficientnet_lite0"),
    "fortunes": (lambda root: REPO / "examples" / "fortunes" / "fortunes.csv", "minilm-l6"),
    "digits": (lambda root: _build("digits", root), "efficientnet_lite0"),
    # the same digits through the features `compare` recommends for them (multi-depth: docs/multi-depth.md)
    "digits_multi_depth": (lambda root: _build("digits", root), "depths:efficientnet_lite0"),
    "fashion_mnist": (lambda root: _build("fashion_mnist", root), "efficientnet_lite0"),
    "emoji_full": (lambda root: _build("emoji_full", root), "efficientnet_lite0"),
    "fortunes_810": (lambda root: _build("fortunes_810", root), "minilm-l6"),
}


def _accuracy(head: Any, X: np.ndarray, y: np.ndarray) -> float:
    return float((head.proba(X).argmax(1) == y).mean())


def _loop(
    X: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    start: np.ndarray,
    target: float,
    strategy: str,
    seed: int,
    per_round: int | None = None,
) -> list[tuple[int, float]]:
    """(labels, test accuracy) of each round, from `start` until the target is reached or the pool spent.
    `per_round`: K; None: one label per class, or the pool / ROUNDS when that is more."""
    from headstart.explore.suggest import fresh_candidates, select
    from headstart.head import fit_head

    n_classes = int(y.max()) + 1
    labeled = list(start)
    rest = np.setdiff1d(pool, start)
    curve = []
    for rnd_i in range(10_000):
        head = fit_head(X[labeled], y[labeled], n_classes)[0]  # C by 5-fold CV on the labels so far
        curve.append((len(labeled), _accuracy(head, X[test], y[test])))
        k = min(per_round or max(n_classes, len(pool) // ROUNDS), len(fresh_candidates(X[rest], X[labeled])))
        if curve[-1][1] >= target - 1e-9 or k == 0:
            break
        picks = select(
            X[rest], head.proba(X[rest]), k, labeled=X[labeled], strategy=strategy, seed=seed * 10_000 + rnd_i
        )
        chosen = rest[[p.index for p in picks]]
        labeled += chosen.tolist()
        rest = np.setdiff1d(rest, chosen)
    return curve


def _one_seed(
    X: np.ndarray, y: np.ndarray, seed: int, strategies: tuple[str, ...], per_round: int | None
) -> dict[str, Any]:
    from headstart.head import fit_head, stratified_folds

    n_classes = int(y.max()) + 1
    test = stratified_folds(y, 3, seed)[0]
    pool = np.setdiff1d(np.arange(len(y)), test)
    full, C, _ = fit_head(X[pool], y[pool], n_classes)  # the full-pool probe, C by 5-fold CV
    full_acc = _accuracy(full, X[test], y[test])
    rng = np.random.default_rng(seed)
    start = np.concatenate(
        [rng.choice(pool[y[pool] == c], START_PER_CLASS, replace=False) for c in range(n_classes)]
    )
    out: dict[str, Any] = {"seed": seed, "C": C, "full_acc": full_acc, "pool": len(pool), "test": len(test)}
    for s in strategies:
        curve = _loop(X, y, pool, test, start, full_acc - TOLERANCE, s, seed, per_round)
        reached = curve[-1][1] >= full_acc - TOLERANCE - 1e-9
        out[s] = {"curve": curve, "needed": curve[-1][0] if reached else len(pool)}
    print(
        f"  seed {seed}: labels needed " + ", ".join(f"{s} {out[s]['needed']}" for s in strategies),
        flush=True,
    )
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


def _task(
    name: str, data: Path, backbone: str, seeds: int, strategies: tuple[str, ...], per_round: int | None
) -> dict[str, Any]:
    from headstart.explore.embedded import embed_dataset
    from headstart.explore.suggest import DEFAULT_STRATEGY

    t0 = time.perf_counter()
    ed = embed_dataset(data, backbone, progress=False)
    X, y = ed.X, ed.y
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs = [_one_seed(X, y, s, strategies, per_round) for s in range(seeds)]
    loop_s = time.perf_counter() - t0
    needed = {s: [r[s]["needed"] for r in runs] for s in strategies}
    stats = {s: _t_interval(needed[s]) for s in strategies}
    ratios = {s: stats[s][0] / stats["random"][0] for s in strategies}
    full = _t_interval([r["full_acc"] for r in runs])
    print(
        f"\n{name}: {len(y)} items, {len(ed.classes)} classes, {backbone}; pool {runs[0]['pool']}, "
        f"test {runs[0]['test']}; embedded in {embed_s:.0f} s, loops {loop_s:.0f} s"
    )
    print(
        f"  full-pool probe test accuracy {full[0]:.3f} [{full[1]:.3f}, {full[2]:.3f}] ({seeds} seeds); "
        f"target = it - {TOLERANCE:.2f}"
    )
    for s in strategies:
        m, lo, hi = stats[s]
        print(
            f"  labels to reach the target, {s:>14}: {m:6.1f} [{lo:.1f}, {hi:.1f}]  / random {ratios[s]:.2f}"
            f"  per seed {needed[s]}"
        )
    print(f"  {DEFAULT_STRATEGY} (the default) / random labels: {ratios[DEFAULT_STRATEGY]:.2f} (goal <= 0.5)")
    curves = {s: _mean_curve(runs, s) for s in strategies}
    shown = min(len(c) for c in curves.values())  # the rounds every strategy and seed reached
    print("  mean test accuracy of the first rounds, by labels: " + "  ".join(strategies))
    for i in range(shown):
        print(f"    {curves['random'][i][0]:5d}  " + "  ".join(f"{curves[s][i][1]:.3f}" for s in strategies))
    return {
        "backbone": backbone,
        "n_items": len(y),
        "n_classes": len(ed.classes),
        "pool": runs[0]["pool"],
        "full_acc": [rnd(v, 4) for v in full],
        "labels_needed": {s: [rnd(v, 1) for v in stats[s]] for s in strategies},
        "labels_needed_per_seed": needed,
        "labels_ratio_vs_random": rnd(ratios[DEFAULT_STRATEGY], 3),
        "ratio_vs_random_by_strategy": {s: rnd(r, 3) for s, r in ratios.items()},
        "C_full_pool": [r["C"] for r in runs],
        "curves": {s: [[n, rnd(a, 4)] for n, a in curves[s]] for s in strategies},
        "embed_s": rnd(embed_s, 1),
        "loop_s": rnd(loop_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="emoji and fortunes, 2 seeds; under 5 minutes")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per task (default 5; quick 2)")
    ap.add_argument("--tasks", default=None, help=f"comma-separated, of {', '.join(TASKS)} (default: all)")
    ap.add_argument("--cache", type=Path, default=None, help="a HEADSTART_CACHE to keep (default: fresh)")
    ap.add_argument(
        "--per-round",
        type=int,
        default=None,
        help="K, labels added per round (default: one per class, or 1/25 of the pool if more)",
    )
    ap.add_argument(
        "--strategies",
        default=None,
        help=f"comma-separated, of {', '.join(STRATEGIES)} (default: all; the default and random always run)",
    )
    args = ap.parse_args()
    names = args.tasks.split(",") if args.tasks else list(QUICK_TASKS if args.quick else TASKS)
    if unknown := [n for n in names if n not in TASKS]:
        ap.error(f"unknown task(s) {', '.join(unknown)}: use some of {', '.join(TASKS)}")
    seeds = args.seeds or (2 if args.quick else 5)
    asked = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    if bad := [s for s in asked if s not in STRATEGIES]:
        ap.error(f"unknown strategy {', '.join(bad)}: use some of {', '.join(STRATEGIES)}")
    strategies = tuple(s for s in STRATEGIES if s in {*asked, "typical-margin", "random"})
    if args.per_round is not None and args.per_round < 1:
        ap.error("--per-round must be at least 1")
    t_start = time.perf_counter()
    print(f"suggest benchmark ({'quick' if args.quick else 'full'}), {seeds} seeds; {machine_load()}")
    print(f"  cpu: {cpu_model()}")
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    with isolated_cache("headstart-bench-suggest-") as root:
        if args.cache is not None:
            os.environ["HEADSTART_CACHE"] = str(args.cache)  # isolated_cache restores it on the way out
        for name in names:
            data = TASKS[name][0](root)
            if isinstance(data, str):
                skipped[name] = data
                print(f"\n{name}: skipped ({data})")
                continue
            results[name] = _task(name, data, TASKS[name][1], seeds, strategies, args.per_round)
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
            "skipped": skipped,
            "cpu": cpu_model(),
            "quick": bool(args.quick),
            "seeds": seeds,
            "tolerance": TOLERANCE,
            "per_round": args.per_round or f"max(classes, pool / {ROUNDS})",
            "total_s": rnd(total, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
