"""Selection: does `compare`'s recommended strategy hold up on the test split, against the probe and the
strategy that turned out best on test, on small packaged data?

What is measured: every task runs, once per seed (a different stratified split and training seed), the
comparison `headstart auto` uses, `headstart.verdicts.compare.compare(DATA, BACKBONE, budget_s=BUDGET,
seed=SEED, out=...)`, with its default strategies. From its rows, per task x seed:

- `rec_test`: test accuracy of the recommended row (`result["recommendation"]["strategy"]`);
- `probe_test`: test accuracy of the `probe` row; `best_test`: the highest test accuracy of any row;
- `regret` = best_test - rec_test; `loss_vs_probe` = probe_test - rec_test (negative: it beat the probe);
- `covered`: whether rec_test lies inside the recommended row's 95 % validation interval
  (`val_accuracy_ci`; where the row lacks it, the run's metrics.json val `accuracy_ci`, else a Wilson
  interval from the val accuracy and val size). The test score is a second sample of the same model, so
  this asks whether the interval the user is shown predicts what the model does on new items.

Tasks (all built offline from packaged data into a temporary folder; the probe, domain distance and the
fine-tunes embed through one isolated HEADSTART_CACHE, so the seeds after a task's first reuse its
embeddings, as a user's repeated runs would):

- `emoji`: examples/emoji/images as packaged (360 items, 9 classes); efficientnet_lite0.
- `fashion_mnist_20`, `fashion_mnist_60`: Fashion-MNIST, 20 and 60 per class
  (examples/build_fashion_mnist.py); efficientnet_lite0.
- `digits`: scikit-learn's 8x8 digits, 30 per class, upscaled (examples/build_digits.py); efficientnet_lite0.
- `fortunes`: examples/fortunes/fortunes.csv (60 per class, 6 classes); minilm-l6.
- `speech`: examples/speech (20 synthetic clips per word, 6 words); whisper-tiny.en.
- `shift`: examples/build_shift.py's shifted Fashion-MNIST items (inverted, recoloured, blurred), 30 per
  class, labeled and split like any folder: a domain far from ImageNet; efficientnet_lite0.
- `shift_ood`: build_shift's original grey items (30 per class), split 80/20 train/val by seed, tested on
  the shifted items: val and test come from different domains; efficientnet_lite0.

Fashion-MNIST tasks need the Debian package dataset-fashion-mnist; without it they are skipped (listed).

Figures (last line, one JSON object): `mean_regret` and `mean_loss_vs_probe` over all task x seed runs,
`max_task_loss_vs_probe` (the worst per-task mean), `interval_coverage` over the runs whose val and test
are drawn from the same pool (every task but shift_ood, where no val interval can be expected to cover
a test score from another domain; `interval_coverage_all` counts it too), `per_task` (means and each
seed's row), `goals` (mean regret <= 0.02, every task's loss against the probe <= 0.005, coverage >= 0.9),
the CPU model, torch threads, budget, seeds and elapsed seconds.

    .venv/bin/python benchmarks/selection.py           # 8 tasks x 3 seeds x 120 s: about an hour, 2 cores
    .venv/bin/python benchmarks/selection.py --quick   # digits + fortunes, 1 seed, 60 s each: a few minutes
    .venv/bin/python benchmarks/selection.py --tasks emoji,speech --seeds 5 --budget 180 --out runs/sel

Timings are estimates (24 compares of a 120 s budget, plus building the data): a compare can overrun its
budget when its probe and domain distance alone take longer (a cold cache on a busy machine). `--out`
keeps the built data and every compare's runs (OUT/runs/<task>/seed<N>/); by default all is temporary.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import EMOJI_ROOT, REPO, Timer, cpu_model, emit_json, isolated_cache, machine_load, rnd

sys.path.insert(0, str(REPO / "examples"))

KEYS = (
    "mean_regret",
    "mean_loss_vs_probe",
    "max_task_loss_vs_probe",
    "interval_coverage",
    "per_task",
    "cpu",
    "threads",
    "budget_s",
    "seeds",
    "elapsed_s",
)
GOAL_REGRET, GOAL_LOSS, GOAL_COVERAGE = 0.02, 0.005, 0.9
QUICK_TASKS = ("digits", "fortunes")
IMAGE, TEXT, AUDIO = "efficientnet_lite0", "minilm-l6", "whisper-tiny.en"
SHIFT_PER_CLASS = 30
OOD_VAL = 0.2  # shift_ood: the share of the source items held out for validation


# -- tasks ----------------------------------------------------------------------------------------------


def _fashion(per_class: int) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        import build_fashion_mnist

        out = root / f"fashion_mnist_{per_class}"
        build_fashion_mnist.build(out, per_class=per_class, seed=0)
        return out

    return build


def _digits(root: Path) -> Path:
    import build_digits

    build_digits.build(root / "digits", per_class=30, seed=0)
    return root / "digits"


def _shift_items(root: Path) -> Path:
    """build_shift once for both shift tasks: OUT/source (grey), OUT/target_test (shifted), 30 per class."""
    import build_shift

    out = root / "shift_build"
    if not ((out / "source").is_dir() and (out / "target_test").is_dir()):
        build_shift.build(out, per_class=SHIFT_PER_CLASS, target_per_class=0, test_per_class=SHIFT_PER_CLASS)
    return out


def _shift(root: Path) -> Path:
    return _shift_items(root) / "target_test"


def _shift_ood(root: Path) -> Path:
    return _shift_items(root)


def _ood_manifest(built: Path, seed: int) -> Path:
    """A path,label,split manifest: the grey source items split train/val by `seed` (stratified), every
    shifted item as test. A fixed split column, so the seed's split is ours, not load_dataset's."""
    rng = random.Random(seed)
    rows: list[tuple[str, str, str]] = []
    for cls in sorted(p for p in (built / "source").iterdir() if p.is_dir()):
        files = sorted(cls.iterdir())
        rng.shuffle(files)
        n_val = max(1, round(len(files) * OOD_VAL))
        rows += [
            (str(f.relative_to(built)), cls.name, "val" if i < n_val else "train")
            for i, f in enumerate(files)
        ]
    for cls in sorted(p for p in (built / "target_test").iterdir() if p.is_dir()):
        rows += [(str(f.relative_to(built)), cls.name, "test") for f in sorted(cls.iterdir())]
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "label", "split"))
    writer.writerows(rows)
    from headstart.fileio import atomic_write_text

    return atomic_write_text(built / f"ood_seed{seed}.csv", buf.getvalue())


@dataclass(frozen=True)
class Task:
    name: str
    backbone: str
    build: Callable[[Path], Path]  # root -> the data compare reads (built once per benchmark)
    per_seed: Callable[[Path, int], Path] | None = None  # (built data, seed) -> what compare reads
    same_distribution: bool = True  # val and test drawn from one pool: the val interval should cover test


TASKS = {
    t.name: t
    for t in (
        Task("emoji", IMAGE, lambda _root: EMOJI_ROOT),
        Task("fashion_mnist_20", IMAGE, _fashion(20)),
        Task("fashion_mnist_60", IMAGE, _fashion(60)),
        Task("digits", IMAGE, _digits),
        Task("fortunes", TEXT, lambda _root: REPO / "examples" / "fortunes" / "fortunes.csv"),
        Task("speech", AUDIO, lambda _root: REPO / "examples" / "speech"),
        Task("shift", IMAGE, _shift),
        Task("shift_ood", IMAGE, _shift_ood, per_seed=_ood_manifest, same_distribution=False),
    )
}


# -- reading compare's rows -----------------------------------------------------------------------------


def _wilson(correct: float, n: int) -> tuple[float, float]:
    from headstart.intervals import wilson

    return wilson(round(correct), n)


def run_metrics(row: dict[str, Any]) -> dict[str, Any]:
    path = Path(row["run_dir"]) / "metrics.json" if row.get("run_dir") else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def val_interval(row: dict[str, Any]) -> tuple[list[float] | None, int | None, str]:
    """(95 % val interval, val size, where the interval came from) of one compare row."""
    val = run_metrics(row).get("val") or {}
    n = row.get("n_val") or val.get("n")
    if row.get("val_accuracy_ci"):
        return [float(x) for x in row["val_accuracy_ci"]], n, "row"
    if val.get("accuracy_ci"):
        return [float(x) for x in val["accuracy_ci"]], n, "metrics.json"
    if n and row.get("val_accuracy") is not None:
        return list(_wilson(row["val_accuracy"] * n, int(n))), n, "wilson"
    return None, n, "none"


def score(result: dict[str, Any]) -> dict[str, Any]:
    """One task x seed: the recommended, probe and best-on-test rows and what separates them."""
    from headstart.errors import HeadstartError

    rows = [r for r in result["rows"] if r.get("test_accuracy") is not None]
    if not rows:
        raise HeadstartError(
            f"compare on {result['data']} gave no row with a test accuracy", fix="check its runs"
        )
    by = {r["strategy"]: r for r in rows}
    rec_name = (result.get("recommendation") or {}).get("strategy")
    best = max(rows, key=lambda r: r["test_accuracy"])
    probe = by.get("probe")
    rec = by.get(rec_name)
    # No recommendation is what `auto` refuses on: scored as the worst outcome (0 accuracy), not dropped.
    rec_test = rec["test_accuracy"] if rec else 0.0
    ci, n_val, ci_from = val_interval(rec) if rec else (None, None, "none")
    return {
        "n_val": n_val,
        "recommended": rec_name,
        "reason": (result.get("recommendation") or {}).get("reason"),
        "rec_val": rnd(rec["val_accuracy"], 4) if rec and rec.get("val_accuracy") is not None else None,
        "rec_test": rnd(rec_test, 4),
        "probe_test": rnd(probe["test_accuracy"], 4) if probe else None,
        "best": best["strategy"],
        "best_test": rnd(best["test_accuracy"], 4),
        "regret": rnd(best["test_accuracy"] - rec_test, 4),
        "loss_vs_probe": rnd(probe["test_accuracy"] - rec_test, 4) if probe else None,
        "val_ci": [rnd(x, 4) for x in ci] if ci else None,
        "ci_from": ci_from,
        "covered": None if ci is None else bool(ci[0] - 1e-9 <= rec_test <= ci[1] + 1e-9),
        "tests": {r["strategy"]: rnd(r["test_accuracy"], 4) for r in rows},
        "vals": {r["strategy"]: rnd(r["val_accuracy"], 4) for r in rows if r.get("val_accuracy") is not None},
        "skipped": list(result.get("skipped") or []),
        "compare_s": rnd(result.get("elapsed_s") or 0.0, 1),
    }


def refit_probe_test(result: dict[str, Any], backbone: str, seed: int) -> float | None:
    """Test accuracy of the probe refit on train+val (same C, cached embeddings): what refitting the
    selected probe would buy over the train-only probe that headstart ships (it keeps val for early
    stopping, calibration and the shown interval)."""
    import numpy as np

    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.features import embed
    from headstart.head import fit_path

    probe = next((r for r in result["rows"] if r["strategy"] == "probe"), None)
    if probe is None or not probe.get("run_dir"):
        return None
    C = float(run_metrics(probe)["C"])
    ds = load_dataset(result.get("data_used") or result["data"], seed=seed)
    feats = embed(create_backbone(backbone), [it.source for it in ds.items], progress=False)
    row = {p: i for i, p in enumerate(feats.paths)}
    index = {c: i for i, c in enumerate(ds.classes)}

    def arrays(splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        items = [it for it in ds.items if it.split in splits and it.source in row]
        return feats.X[[row[it.source] for it in items]], np.array([index[it.label] for it in items])

    X, y = arrays(("train", "val"))
    Xt, yt = arrays(("test",))
    head = fit_path(X, y, len(ds.classes), (C,))[0]
    return float((head.proba(Xt).argmax(1) == yt).mean())


# -- the table ------------------------------------------------------------------------------------------

HEADER = (
    f"{'task':17} {'seed':>4} {'n_val':>5} {'recommended':12} {'rec':>6} {'probe':>6} "
    f"{'best on test':>20} {'regret':>7} {'vs probe':>8} {'val 95% CI':>13} {'cov':>4} {'s':>5}"
)


def _f(x: float | None, w: int = 6, d: int = 3) -> str:
    return f"{'-':>{w}}" if x is None else f"{x:{w}.{d}f}"


def row_line(task: str, seed: int | str, s: dict[str, Any]) -> str:
    ci = s["val_ci"]
    ci_s = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"
    cov = "-" if s["covered"] is None else ("yes" if s["covered"] else "NO")
    best = f"{s['best']} {s['best_test']:.3f}"
    return (
        f"{task:17} {seed!s:>4} {s['n_val'] or '-'!s:>5} {s['recommended'] or '-':12} {_f(s['rec_test'])} "
        f"{_f(s['probe_test'])} {best:>20} {_f(s['regret'], 7)} {_f(s['loss_vs_probe'], 8)} {ci_s:>13} "
        f"{cov:>4} {s['compare_s']:5.0f}"
    )


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return rnd(statistics.fmean(vals), 4) if vals else None


def task_summary(runs: list[dict[str, Any]], same_distribution: bool) -> dict[str, Any]:
    cov = [r["covered"] for r in runs if r["covered"] is not None]
    return {
        "n_runs": len(runs),
        "same_distribution": same_distribution,
        "mean_rec_test": _mean([r["rec_test"] for r in runs]),
        "mean_probe_test": _mean([r["probe_test"] for r in runs]),
        "mean_best_test": _mean([r["best_test"] for r in runs]),
        "mean_regret": _mean([r["regret"] for r in runs]),
        "mean_loss_vs_probe": _mean([r["loss_vs_probe"] for r in runs]),
        "coverage": rnd(sum(cov) / len(cov), 3) if cov else None,
        "recommended": [r["recommended"] for r in runs],
        "runs": runs,
    }


# -- main -----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_TASKS)}; 1 seed; 60 s budget")
    ap.add_argument("--budget", type=float, default=None, help="seconds per compare (default 120; quick 60)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (splits) per task (default 3; quick 1)")
    ap.add_argument("--tasks", default=None, help=f"comma-separated subset of: {', '.join(TASKS)}")
    ap.add_argument(
        "--out", type=Path, default=None, help="keep the built data and runs here (default: temp)"
    )
    args = ap.parse_args()
    args.budget = args.budget if args.budget is not None else (60.0 if args.quick else 120.0)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    names = args.tasks.split(",") if args.tasks else list(QUICK_TASKS if args.quick else TASKS)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    # Cheap checks before any data is built or model loaded.
    if unknown or not names:
        ap.error(f"--tasks {args.tasks!r}: unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if args.budget <= 0:
        ap.error(f"--budget {args.budget}: must be a positive number of seconds")
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: must be at least 1")
    args.task_names = names
    return args


def main() -> None:
    args = parse_args()
    import torch

    from headstart.errors import HeadstartError
    from headstart.verdicts.compare import compare

    print(
        f"selection benchmark: tasks {', '.join(args.task_names)}; {args.seeds} seed(s); "
        f"{args.budget:.0f} s per compare; {machine_load()}",
        flush=True,
    )
    per_task: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    all_runs: list[tuple[Task, dict[str, Any]]] = []
    with Timer() as total, isolated_cache("headstart-bench-selection-") as tmp:
        work = args.out if args.out is not None else tmp
        print(HEADER, flush=True)
        for name in args.task_names:
            task = TASKS[name]
            try:
                data = task.build(work / "data")
            except FileNotFoundError as e:  # a Debian data package that is not installed
                skipped[name] = str(e)
                print(f"{name:17} skipped: {e}", flush=True)
                continue
            runs: list[dict[str, Any]] = []
            for seed in range(args.seeds):
                path = task.per_seed(data, seed) if task.per_seed else data
                try:
                    result = compare(
                        path,
                        task.backbone,
                        budget_s=args.budget,
                        seed=seed,
                        out=work / "runs" / name / f"seed{seed}",
                        progress=False,
                    )
                    s = {"seed": seed, **score(result)}
                    refit = refit_probe_test(result, task.backbone, seed)
                    s["refit_probe_test"] = rnd(refit, 4) if refit is not None else None
                    s["refit_gain"] = (
                        rnd(refit - s["probe_test"], 4)
                        if refit is not None and s["probe_test"] is not None
                        else None
                    )
                except HeadstartError as e:
                    skipped[f"{name}/seed{seed}"] = str(e)
                    print(f"{name:17} {seed:>4} failed: {e}", flush=True)
                    continue
                runs.append(s)
                all_runs.append((task, s))
                print(row_line(name, seed, s), flush=True)
            if runs:
                per_task[name] = task_summary(runs, task.same_distribution)
                m = per_task[name]
                print(
                    f"{'':17} {'mean':>4} {'':5} {'':12} {_f(m['mean_rec_test'])} {_f(m['mean_probe_test'])} "
                    f"{_f(m['mean_best_test'], 20)} {_f(m['mean_regret'], 7)} "
                    f"{_f(m['mean_loss_vs_probe'], 8)} {'coverage':>13} {_f(m['coverage'], 4, 2)}",
                    flush=True,
                )
    if not all_runs:
        raise SystemExit(f"no task ran: {skipped}")

    runs_only = [s for _, s in all_runs]
    task_losses = [m["mean_loss_vs_probe"] for m in per_task.values() if m["mean_loss_vs_probe"] is not None]
    same = [s["covered"] for t, s in all_runs if t.same_distribution and s["covered"] is not None]
    every = [s["covered"] for _, s in all_runs if s["covered"] is not None]
    mean_regret = _mean([s["regret"] for s in runs_only])
    max_loss = max(task_losses) if task_losses else None
    coverage = rnd(sum(same) / len(same), 3) if same else None
    result: dict[str, Any] = {
        "mean_regret": mean_regret,
        "mean_loss_vs_probe": _mean([s["loss_vs_probe"] for s in runs_only]),
        "max_task_loss_vs_probe": max_loss,
        "interval_coverage": coverage,
        "interval_coverage_all": rnd(sum(every) / len(every), 3) if every else None,
        "n_runs": len(runs_only),
        "mean_refit_gain": _mean([s.get("refit_gain") for s in runs_only]),
        "goals": {
            f"mean_regret<={GOAL_REGRET}": mean_regret is not None and mean_regret <= GOAL_REGRET,
            f"every_task_loss_vs_probe<={GOAL_LOSS}": max_loss is not None and max_loss <= GOAL_LOSS,
            f"interval_coverage>={GOAL_COVERAGE}": coverage is not None and coverage >= GOAL_COVERAGE,
        },
        "per_task": per_task,
        "skipped": skipped,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "budget_s": args.budget,
        "seeds": args.seeds,
        "tasks": args.task_names,
        "elapsed_s": rnd(total.s, 1),
    }
    print(
        f"\n{len(runs_only)} runs: mean regret {mean_regret}, mean loss vs probe "
        f"{result['mean_loss_vs_probe']}, worst task loss vs probe {max_loss}, interval coverage "
        f"{coverage} (all tasks {result['interval_coverage_all']}); {total.s:.0f} s; {machine_load()}",
        flush=True,
    )
    emit_json(result, KEYS)


if __name__ == "__main__":
    main()
