"""Fine-tuning levers peers ship as defaults: do they buy test accuracy here?

Per task and seed, `headstart fit` runs LP-FT (the probe's head, then every group at the recipe's rates)
with the same epochs, seed and split, once plain and once per lever:
- `label-smoothing`: label_smoothing 0.1 (Szegedy et al. 2016; timm's default);
- `mixup`: mixup 0.2 (Zhang et al. 2018; images only);
- `llrd-0.9`: layer-wise rate decay 0.9 per group below the top (AutoGluon's default), as lr_decay;
- `ema`: an exponential moving average of the trained weights, decay 0.99 (warmed up: over a few dozen
  steps it averages the last few), evaluated and kept instead of the weights;
- `soup`: the greedy soup of the 3 best evaluations (the probe head LP-FT starts from counts), as
  AutoGluon's multimodal fine-tuning ends (Wortsman et al. 2022);
- `drop-path-0`: stochastic depth off in the trained groups (EfficientNet-Lite's own is 0.2), so the
  train-mode forward is the one the probe's head was fit on (image backbones with stochastic depth only).
Tasks: emoji and fortunes by default; any image task of benchmarks/selection.py (digits, shift,
fashion_mnist_20, ...) by name, built once into a temporary folder.
Each lever's test correctness is paired with the plain run's on the same test items, pooled over seeds
(headstart.intervals.paired_difference: bootstrap interval, exact McNemar). A lever becomes a default only
if it beats the plain run beyond noise. Measured (`--tasks emoji --seeds 2 --epochs 3`, then `--tasks
fortunes`, same flags; 2-core Intel Xeon, 411 s and 179 s): every lever tied plain LP-FT (-0.019 to 0.000,
p >= 0.5, 108 test items per task), so all stay opt-in recipe fields. `--levers ema,soup` (both tasks,
same flags, 474 s): EMA +0.000 on both, soup +0.000 on emoji and +0.009 (p 1.0) on fortunes: ties too.

    .venv/bin/python benchmarks/levers.py            # emoji + fortunes, 3 seeds, 4 epochs
    .venv/bin/python benchmarks/levers.py --quick    # emoji, 1 seed, 2 epochs (2 min 40 s, quiet Xeon)
    .venv/bin/python benchmarks/levers.py --tasks emoji --seeds 2 --epochs 3 --levers ema,soup

The last line printed is one JSON object: per task and lever, the test accuracy (pooled, Wilson interval),
the paired gain over plain LP-FT with its interval and p, and `levers_beyond_noise` (how many
(task, lever) pairs beat plain LP-FT beyond noise).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cpu_model, emit_json, isolated_cache, machine_load, rnd
from selection import IMAGE, TASKS

KEYS = ("levers_beyond_noise", "per_task", "cpu", "seeds", "epochs", "elapsed_s")
IMAGE_ONLY = ("mixup", "drop_path")  # fields for the image tasks' backbone (Lite0) only
LEVERS: dict[str, dict[str, float]] = {
    "plain": {},
    "label-smoothing": {"label_smoothing": 0.1},
    "mixup": {"mixup": 0.2},
    "llrd-0.9": {"lr_decay": 0.9},
    "ema": {"ema": 0.99},
    "soup": {"soup": 3},
    "drop-path-0": {"drop_path": 0.0},
}
RECIPE_LEVERS = ("soup",)  # fields of the recipe, not of its phase


def recipe(folder: Path, name: str, epochs: int, lever: dict[str, float]) -> str:
    """LP-FT (the built-in's phases) with the lever's fields set on its training phase."""
    from headstart.recipes import get_recipe

    base = get_recipe("lp-ft", 10).to_dict()
    base["name"] = f"lp-ft+{name}"
    base["phases"][-1].update(
        {"epochs": epochs, **{k: v for k, v in lever.items() if k not in RECIPE_LEVERS}}
    )
    base.update({k: v for k, v in lever.items() if k in RECIPE_LEVERS})
    path = folder / f"{name}.json"
    path.write_text(json.dumps(base))
    return str(path)


def test_correct(run: Path) -> list[bool]:
    test = json.loads((run / "metrics.json").read_text())["test"]
    return [t == p for t, p in zip(test["true"], test["pred"], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", default=None, help="comma-separated, of selection.py's tasks")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument(
        "--levers", default=None, help=f"comma-separated, of {', '.join(LEVERS)} (plain always runs)"
    )
    args = ap.parse_args()
    chosen = ["plain", *(args.levers.split(",") if args.levers else [k for k in LEVERS if k != "plain"])]
    unknown = [k for k in chosen if k not in LEVERS]
    if unknown:
        ap.error(f"unknown lever(s) {unknown}: choose from {list(LEVERS)}")
    tasks = (args.tasks or ("emoji" if args.quick else "emoji,fortunes")).split(",")
    unknown = [t for t in tasks if t not in TASKS or TASKS[t].per_seed is not None]
    if unknown:
        ap.error(f"unknown task(s) {unknown}: choose from {[t for t in TASKS if TASKS[t].per_seed is None]}")
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (2 if args.quick else 4)
    from headstart.intervals import paired_difference, wilson
    from headstart.train import fit

    t0 = time.perf_counter()
    print(f"levers benchmark: {tasks}, {seeds} seed(s), {epochs} epochs; {cpu_model()}; {machine_load()}")
    per_task: dict[str, Any] = {}
    wins = 0
    with isolated_cache(), tempfile.TemporaryDirectory(prefix="headstart-levers-") as tmp:
        root = Path(tmp)
        for task in tasks:
            data, backbone = TASKS[task].build(root), TASKS[task].backbone
            correct: dict[str, list[bool]] = {}
            for lever, fields in ((k, LEVERS[k]) for k in dict.fromkeys(chosen)):
                if any(f in fields for f in IMAGE_ONLY) and backbone != IMAGE:
                    continue
                for seed in range(seeds):
                    out = root / f"{task}-{lever}-{seed}"
                    (root / "recipes").mkdir(exist_ok=True)
                    t = time.perf_counter()
                    fit(
                        data,
                        backbone=backbone,
                        strategy=recipe(root / "recipes", lever, epochs, fields),
                        seed=seed,
                        out=out,
                        progress=False,
                    )
                    hits = test_correct(out)
                    correct.setdefault(lever, []).extend(hits)
                    print(
                        f"  {task} {lever} seed {seed}: test {sum(hits) / len(hits):.3f} "
                        f"({time.perf_counter() - t:.0f} s)",
                        flush=True,
                    )
            rows = {}
            for lever, hits in correct.items():
                lo, hi = wilson(sum(hits), len(hits))
                row: dict[str, Any] = {"test": rnd(sum(hits) / len(hits)), "ci": [rnd(lo), rnd(hi)]}
                if lever != "plain":
                    d = paired_difference(hits, correct["plain"])
                    row |= {"gain": rnd(d["diff"]), "gain_ci": [rnd(x) for x in d["ci"]], "p": rnd(d["p"])}
                    row["beyond_noise"] = d["p"] < 0.05 and d["diff"] > 0
                    wins += row["beyond_noise"]
                rows[lever] = row
                print(f"  {task} {lever}: {row}")
            per_task[task] = rows
    emit_json(
        {
            "levers_beyond_noise": wins,
            "per_task": per_task,
            "cpu": cpu_model(),
            "seeds": seeds,
            "epochs": epochs,
            "elapsed_s": rnd(time.perf_counter() - t0, 1),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
