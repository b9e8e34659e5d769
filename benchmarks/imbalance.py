"""Class imbalance: the probe with `--imbalance off` (today's unweighted head, C chosen by accuracy) against
`auto` (inverse-frequency class weights, C chosen by balanced accuracy) on a 10:1 skewed training set, scored
on a BALANCED test set.

The task (built here from the bundled emoji, see _common.py: distinct augmented 224 px JPEGs):
6 emoji classes; per seed, 3 of them (drawn by the seed) are majority classes with MAJOR training items and
the other 3 minority classes with MAJOR / 10 (a 10:1 ratio); no val split, so C is chosen by stratified CV
on the training items, as `probe` does without val. The test split is the same TEST items per class for
every seed and both arms, so the arms are paired item by item. On a balanced test set accuracy equals
balanced accuracy.

What is measured (EfficientNet-Lite0, packaged ImageNet weights, on the CPU, through
`headstart.api.probe(manifest, imbalance=...)`: the real pipeline):
- `balanced_accuracy_off`, `balanced_accuracy_auto`: test balanced accuracy, mean over the seeds; each
  seed's own value with its 95 % bootstrap interval is printed.
- `gain`: auto minus off; `gain_ci`: 95 % paired bootstrap over test items of the seed-averaged per-item
  difference (every resample keeps an item's results across seeds together); `beyond_noise`: the interval
  excludes 0.
- Extra: `minority_recall_off/auto` (mean test recall of the minority classes), the C each arm chose, and
  `balanced_accuracy_sqrt`: the same head with inverse-square-root weights (fitted by
  headstart.head.fit_head on the same cached embeddings, C chosen the same way), to justify the choice.

Run (from the repository root):

    .venv/bin/python benchmarks/imbalance.py            # 3 seeds, 100 vs 10 per class, 40 test: ~840 images
    .venv/bin/python benchmarks/imbalance.py --quick    # 3 seeds, 40 vs 4 per class, 15 test: ~330 images

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import cpu_model, emit_json, isolated_cache, machine_load, make_class_folder, rnd

KEYS = ("balanced_accuracy_off", "balanced_accuracy_auto", "gain", "gain_ci", "beyond_noise", "cpu")
BACKBONE = "efficientnet_lite0"
N_CLASSES = 6
FINETUNE, FINETUNE_EPOCHS = "partial:1", 4
RATIO = 10


def manifest(
    pool: dict[str, list[str]], classes: list[str], major: int, test: int, seed: int, out: Path
) -> Path:
    """A path,label,split CSV: `test` fixed items per class; train: `major` of the seed's majority classes'
    items, `major // RATIO` of the others'."""
    rng = np.random.default_rng(seed)
    majority = set(rng.choice(classes, size=len(classes) // 2, replace=False).tolist())
    rows = []
    for c in classes:
        files = pool[c]
        rows += [(f, c, "test") for f in files[:test]]
        n = major if c in majority else major // RATIO
        rows += [(f, c, "train") for f in rng.choice(files[test:], size=n, replace=False).tolist()]
    path = out / f"skewed-seed{seed}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def sqrt_arm(report: Any, data: Path, seed: int) -> float:
    """Test balanced accuracy of the head with inverse-square-root class weights (same C path, CV, metric)."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed
    from headstart.head import fit_head
    from headstart.imbalance import balanced_accuracy

    ds = load_dataset(data, seed=seed)
    index = {c: i for i, c in enumerate(ds.classes)}
    bb = create_backbone(BACKBONE)

    def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        items = ds.split(split)
        feats = embed(bb, [it.source for it in items], progress=False)
        return feats.X, np.array([index[it.label] for it in items])

    (X, y), (Xt, yt) = arrays("train"), arrays("test")
    counts = np.bincount(y, minlength=len(ds.classes)).astype(float)
    w = counts**-0.5
    w *= len(y) / float((w * counts).sum())  # mean 1 per training item, as the inverse-frequency weights
    head, _, _ = fit_head(X, y, len(ds.classes), class_weight=w, metric="balanced_accuracy", seed=seed)
    return balanced_accuracy(yt, head.logits(Xt).argmax(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 vs 4 per class, 15 test per class")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--finetune",
        action="store_true",
        help=f"also `fit --strategy {FINETUNE} --epochs {FINETUNE_EPOCHS}` off vs auto (weighted loss)",
    )
    args = ap.parse_args()
    major, test = (40, 15) if args.quick else (100, 40)

    import headstart.api  # noqa: F401  (imports before any clock)
    from headstart.api import probe
    from headstart.intervals import bootstrap_indices, fmt_ci

    t_start = time.perf_counter()
    with isolated_cache("headstart-bench-imbalance-") as root:
        folder = root / "pool"
        pool_all = make_class_folder(folder, major + test, size=224)
        classes = sorted(pool_all)[:N_CLASSES]
        pool = {c: pool_all[c] for c in classes}
        print(
            f"{len(classes)} emoji classes; per seed 3 majority classes with {major} training items, "
            f"3 minority with {major // RATIO} ({RATIO}:1); {test} test items per class (balanced), "
            f"{args.seeds} seeds"
        )
        per_item: dict[str, list[np.ndarray]] = {"off": [], "auto": []}
        figures: dict[str, list[float]] = {
            "off": [],
            "auto": [],
            "sqrt": [],
            "minor_off": [],
            "minor_auto": [],
        }
        for seed in range(args.seeds):
            data = manifest(pool, classes, major, test, seed, root)
            for mode in ("off", "auto"):
                r = probe(data, backbone=BACKBONE, seed=seed, imbalance=mode, save=False, progress=False)
                m = r.metrics["test"]
                pred, true = np.asarray(m["pred"]), np.asarray(m["true"])
                per_item[mode].append(pred == true)
                figures[mode].append(m["balanced_accuracy"])
                counts = r.data["counts"]["train"]
                minority = [c for c in classes if counts[c] < major]
                figures[f"minor_{mode}"].append(
                    float(np.mean([m["per_class"][c]["recall"] for c in minority]))
                )
                print(
                    f"  seed {seed} {mode:>4}: test balanced accuracy "
                    f"{fmt_ci(m['balanced_accuracy'], m['balanced_accuracy_ci'])} (C = {r.metrics['C']:g}; "
                    f"minority recall {figures[f'minor_{mode}'][-1]:.3f}; "
                    f"{r.metrics['imbalance']['summary']})"
                )
            if args.finetune:
                from headstart.train import fit

                for mode in ("off", "auto"):
                    f = fit(
                        data,
                        backbone=BACKBONE,
                        strategy=FINETUNE,
                        epochs=FINETUNE_EPOCHS,
                        seed=seed,
                        imbalance=mode,
                        save=False,
                        progress=False,
                    )
                    figures.setdefault(f"ft_{mode}", []).append(f.metrics["test"]["balanced_accuracy"])
                    print(
                        f"  seed {seed} {FINETUNE} {mode}: test balanced accuracy "
                        f"{figures[f'ft_{mode}'][-1]:.3f}"
                    )
            figures["sqrt"].append(sqrt_arm(r, data, seed))
            print(
                f"  seed {seed} sqrt: test balanced accuracy {figures['sqrt'][-1]:.3f} (inverse-sqrt weights)"
            )
    # Paired over test items: each item's auto-minus-off correctness averaged over the seeds, then resampled.
    d = np.mean(
        [a.astype(float) - o.astype(float) for a, o in zip(per_item["auto"], per_item["off"], strict=True)], 0
    )
    boot = d[bootstrap_indices(len(d))].mean(axis=1)
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    off, auto = float(np.mean(figures["off"])), float(np.mean(figures["auto"]))
    total = time.perf_counter() - t_start
    print(
        f"balanced accuracy off {off:.3f}, auto {auto:.3f}: gain {auto - off:+.3f} "
        f"[{lo:+.3f}, {hi:+.3f}] (paired bootstrap over {len(d)} test items, seed-averaged); "
        f"inverse-sqrt weights {np.mean(figures['sqrt']):.3f}"
    )
    print(f"total wall time {total:.0f} s; {machine_load()}; {cpu_model()}")
    emit_json(
        {
            "balanced_accuracy_off": rnd(off, 4),
            "balanced_accuracy_auto": rnd(auto, 4),
            "gain": rnd(auto - off, 4),
            "gain_ci": [rnd(lo, 4), rnd(hi, 4)],
            "beyond_noise": bool(lo > 0 or hi < 0),
            "balanced_accuracy_sqrt": rnd(float(np.mean(figures["sqrt"])), 4),
            "minority_recall_off": rnd(float(np.mean(figures["minor_off"])), 4),
            "minority_recall_auto": rnd(float(np.mean(figures["minor_auto"])), 4),
            **{
                f"finetune_balanced_accuracy_{m}": rnd(float(np.mean(figures[f"ft_{m}"])), 4)
                for m in ("off", "auto")
                if f"ft_{m}" in figures
            },
            "per_seed_off": [rnd(v, 4) for v in figures["off"]],
            "per_seed_auto": [rnd(v, 4) for v in figures["auto"]],
            "seeds": args.seeds,
            "train_per_class": [major, major // RATIO],
            "test_per_class": test,
            "quick": bool(args.quick),
            "cpu": cpu_model(),
            "total_s": rnd(total, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
