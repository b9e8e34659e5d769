"""Accuracy per CPU second: does a strategy beyond the linear probe buy test accuracy within a fixed CPU
budget, and what does it cost to train and to serve?

What is measured: every task of benchmarks/selection.py (built offline from packaged data), once per seed,
runs the comparison `headstart auto` uses, `headstart.verdicts.compare.compare(DATA, BACKBONE,
budget_s=BUDGET, seed=SEED)`, with its default strategies (the probe, the frozen `multi-depth` head, the
from-scratch baseline and the fine-tunes that fit the data). For every row: test accuracy with its Wilson
95 % interval, training seconds (`train_s`, wall clock on this machine) and the single-item forward latency
of the saved run (compare's `latency_ms`: headstart.latency.run_latency_ms, p50, torch eager).

Test items: each task's own test split (15 % of 20 to 60 items per class: 3 to 9 per class and seed) is
too small to tell a five-point gain from noise, so every task with more packaged items of its classes
(benchmarks/held_out.py: all but speech) gets up to 60 more per class in its test split, from the same
source and domain, none of them the task's own items. Train and val stay exactly as the seed draws them,
so every row trains and is chosen on the same data as without them; only the test score gains power.
(compare prices its probe pass over every item, test included, so the trained rows' even shares of the
budget shrink by the extra items' share of that pass: a few seconds of 300.)
`--no-held-out` tests on the tasks' own test splits alone (as before session 11).

Per task, "beyond noise" is the paired test on the test items: the row's per-item correctness against the
probe's, pooled over the seeds, exact McNemar at 5 % (headstart.intervals.paired_difference, whose
bootstrap interval is shown), Holm-corrected over the task's new rows (`vs_probe`: each row's test; the
best on test is picked after the fact, so it is read with every row it was picked from).
`wins_vs_probe`: tasks where the best row other than the probe and scratch beats the probe beyond noise;
`wins_recommended`: those where compare recommended that row on most seeds; `losses_vs_probe`: tasks where
the recommended row loses to the probe beyond noise. `val_argmax_vs_probe`: what a rule blind to noise
(each seed's best validation point estimate) would have picked, against the probe on test.
`recommended_vs_probe`: each seed's recommended row against the probe on that seed's test items, pooled;
`recommended_beats_probe`: tasks where that is a gain beyond noise. `--rescore DIR --reselect` makes each
seed's recommendation again by today's selection rule from the kept runs (their val evidence and the
frozen heads' k-fold evidence recomputed), so a rule change is measured on the same runs; with
`--first-seed N`, on new splits and runs it was not designed on.
`multi_depth_cost_ratio`: a cold `fit --strategy multi-depth` over a cold probe, both from an empty feature
cache, best of two each in alternating order, on the first task's data (the goal: at most 1.5).

    .venv/bin/python benchmarks/accuracy_per_second.py            # 6 tasks x 3 seeds x 300 s: ~1 hour
    .venv/bin/python benchmarks/accuracy_per_second.py --quick    # digits + fortunes, 1 seed, 120 s each
    .venv/bin/python benchmarks/accuracy_per_second.py --tasks emoji --seeds 2 --budget 180
    .venv/bin/python benchmarks/accuracy_per_second.py --strategies multi-depth   # frozen heads only: minutes
    .venv/bin/python benchmarks/accuracy_per_second.py --out DIR   # keep the runs, then reread them:
    .venv/bin/python benchmarks/accuracy_per_second.py --rescore DIR [--reselect]

Last line: one JSON object with `wins_vs_probe`, `losses_vs_probe`, `per_task` (each strategy's mean test
accuracy, interval, train_s, latency_ms; the gain of the best new strategy and its pooled paired test),
`multi_depth_cost_ratio`, the CPU model, budget, seeds and elapsed seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import Timer, cpu_model, emit_json, isolated_cache, machine_load, rnd
from held_out import BUILDERS, PER_CLASS, with_held_out
from selection import TASKS, run_metrics

KEYS = (
    "wins_vs_probe",
    "wins_recommended",
    "recommended_beats_probe",
    "losses_vs_probe",
    "multi_depth_cost_ratio",
    "per_task",
    "cpu",
    "budget_s",
    "seeds",
    "elapsed_s",
)
DEFAULT_TASKS = ("emoji", "fashion_mnist_20", "digits", "fortunes", "speech", "shift")
QUICK_TASKS = ("digits", "fortunes")
NOT_NEW = ("probe", "scratch")
COST_FILE = "multi_depth_cost.json"  # under --out: the cold-cost figures, for --rescore


def _test_correct(row: dict[str, Any]) -> list[bool] | None:
    test = run_metrics(row).get("test") or {}
    if "true" not in test or "pred" not in test:
        return None
    return [t == p for t, p in zip(test["true"], test["pred"], strict=True)]


def run_seed(
    task: Any, data: Path, seed: int, budget: float, out: Path, strategies: list[str] | None
) -> list[dict[str, Any]]:
    from headstart.verdicts.compare import compare

    result = compare(
        data, task.backbone, budget_s=budget, seed=seed, out=out, progress=False, strategies=strategies
    )
    return seed_rows(result, seed)


def seed_rows(result: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One compare's rows that have test predictions: test accuracy, cost and per-item correctness."""
    from headstart.intervals import wilson

    rec = (result.get("recommendation") or {}).get("strategy")
    rows = []
    for r in result["rows"]:
        correct = _test_correct(r)
        if correct is None:
            continue
        n = len(correct)
        rows.append(
            {
                "strategy": r["strategy"],
                "recommended": r["strategy"] == rec,
                "test_accuracy": sum(correct) / n,
                "test_ci": list(wilson(sum(correct), n)),
                "n_test": n,
                "train_s": r.get("train_s"),
                "latency_ms": r.get("latency_ms"),
                "val_accuracy": r.get("val_accuracy"),
                "correct": correct,
            }
        )
    print(
        f"  seed {seed}: "
        + ", ".join(f"{r['strategy']} {r['test_accuracy']:.3f} ({r['train_s'] or 0:.0f} s)" for r in rows)
        + f"; recommended {rec}",
        flush=True,
    )
    return rows


def _pooled(runs: list[list[dict[str, Any]]], a: str, b: str) -> dict[str, Any] | None:
    """a minus b on the test items of every seed where both ran, paired per item."""
    ca, cb = [], []
    for rows in runs:
        by = {r["strategy"]: r["correct"] for r in rows}
        if a in by and b in by and len(by[a]) == len(by[b]):
            ca += by[a]
            cb += by[b]
    return _paired(ca, cb) if ca else None


def _paired(ca: list[bool], cb: list[bool]) -> dict[str, Any]:
    """The paired test of per-item correctness a against b, rounded for the JSON."""
    from headstart.intervals import paired_difference

    t = paired_difference(ca, cb)
    return {"diff": rnd(t["diff"], 4), "ci": [rnd(x, 4) for x in t["ci"]], "p": rnd(t["p"], 4), "n": len(ca)}


def summarise(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    from headstart.intervals import ALPHA, holm, wilson

    names = list(dict.fromkeys(r["strategy"] for rows in runs for r in rows))
    strategies = {}
    for s in names:
        got = [r for rows in runs for r in rows if r["strategy"] == s]
        right, n = sum(sum(r["correct"]) for r in got), sum(r["n_test"] for r in got)
        lat = [r["latency_ms"] for r in got if r["latency_ms"] is not None]
        strategies[s] = {
            "test_accuracy": rnd(right / n, 4),
            "test_ci": [rnd(x, 4) for x in wilson(right, n)],
            "train_s": rnd(statistics.mean(r["train_s"] or 0.0 for r in got), 1),
            "latency_ms": rnd(statistics.median(lat), 2) if lat else None,
            "recommended": sum(r["recommended"] for r in got),
            "seeds": len(got),
        }
    # Every new row against the probe, Holm-corrected over the task's rows: the best on test is picked
    # after the fact, so its p is read with every row it was picked from.
    new = [s for s in names if s not in NOT_NEW]
    tests = {s: t for s in new if (t := _pooled(runs, s, "probe")) is not None}
    for s, p in zip(tests, holm([t["p"] for t in tests.values()]), strict=True):
        tests[s]["p_holm"] = rnd(p, 4)
        better = tests[s]["diff"] > 0
        tests[s]["verdict"] = "tie" if p >= ALPHA else ("beats the probe" if better else "loses")
    best = max(tests, key=lambda s: strategies[s]["test_accuracy"]) if tests else None
    vs_probe = tests.get(best) if best else None
    recs = [r["strategy"] for rows in runs for r in rows if r["recommended"]]
    rec = statistics.mode(recs) if recs else None
    rec_vs_probe = _pooled(runs, rec, "probe") if rec and rec != "probe" else None
    wins = bool(vs_probe and vs_probe["diff"] > 0 and vs_probe["p_holm"] < ALPHA)
    # What a rule blind to noise would have done: each seed's best validation point estimate (the probe,
    # then the earlier row, on a tie), paired with the probe on that seed's test items.
    picked, blind, ref = [], [], []
    for rows in runs:
        by = {r["strategy"]: r for r in rows}
        scored = [r for r in rows if r["strategy"] != "scratch" and r.get("val_accuracy") is not None]
        if "probe" not in by or not scored:
            continue
        top = max(scored, key=lambda r: (r["val_accuracy"], r["strategy"] == "probe", -rows.index(r)))
        picked.append(top["strategy"])
        blind += top["correct"]
        ref += by["probe"]["correct"]
    val_argmax = {"picked": picked, **_paired(blind, ref)} if blind else None
    # What the rule recommended, seed by seed, against the probe on those seeds' test items.
    chosen, rec_correct, rec_ref = [], [], []
    for rows in runs:
        by = {r["strategy"]: r for r in rows}
        pick = next((r for r in rows if r["recommended"]), None)
        if pick is None or "probe" not in by:
            continue
        chosen.append(pick["strategy"])
        rec_correct += pick["correct"]
        rec_ref += by["probe"]["correct"]
    recommended_vs = {"picked": chosen, **_paired(rec_correct, rec_ref)} if rec_correct else None
    return {
        "strategies": strategies,
        "vs_probe": tests,
        "best_new": best,
        "gain_vs_probe": vs_probe,
        "best_new_wins": wins,
        "best_new_recommended": wins and rec == best,
        "recommended": rec,
        "recommended_loses": bool(rec_vs_probe and rec_vs_probe["diff"] < 0 and rec_vs_probe["p"] < ALPHA),
        "val_argmax_vs_probe": val_argmax,
        "recommended_vs_probe": recommended_vs,
        "recommended_beats_probe": bool(
            recommended_vs and recommended_vs["diff"] > 0 and recommended_vs["p"] < ALPHA
        ),
    }


def rescored(task_runs: Path, reselect: bool = False) -> list[list[dict[str, Any]]]:
    """The seeds' rows of a task from the compare.json files an earlier run kept (seed0, seed1, ...);
    with `reselect`, each seed's recommendation made again by today's rule (`reselected`)."""
    found = sorted(task_runs.glob("seed*/compare.json"), key=lambda p: int(p.parent.name[4:]))
    out = []
    for p in found:
        result = json.loads(p.read_text())
        if reselect:
            result["recommendation"] = reselected(result, int(p.parent.name[4:]))
        out.append(seed_rows(result, int(p.parent.name[4:])))
    return out


def reselected(result: dict[str, Any], seed: int) -> dict[str, Any]:
    """compare's recommendation made again from its kept runs by today's rule (headstart.verdicts.select):
    each row's val evidence (correctness, tempered NLL) recomputed from its saved model, the frozen heads'
    k-fold evidence recomputed on the same folds. Runs kept by an older compare lack the evidence today's
    rule reads; this reads it from the runs themselves."""
    import numpy as np

    from headstart.calibration import tempered_nll
    from headstart.imbalance import ACCURACY, item_weights
    from headstart.model import load_model
    from headstart.runs import item_sources, load_run_info, read_split_rows
    from headstart.verdicts.cheap_cv import frozen_head_hits
    from headstart.verdicts.select import SCRATCH, select

    rows = result["rows"]
    correct, nll = {}, {}
    order: list[str] | None = None
    expected: list[int] = []
    for r in rows:
        if not r.get("run_dir") or r["strategy"] == SCRATCH:
            continue
        run = Path(r["run_dir"])
        val = [x for x in read_split_rows(run) if x.split == "val"]
        model = load_model(run)
        z, kept, _ = model.logits(item_sources(run, val, load_run_info(run)))
        index = {c: i for i, c in enumerate(model.classes)}
        key = [val[i].label + "\0" + (val[i].sha256 or val[i].path) for i in kept]
        y = np.array([index[val[i].label] for i in kept])
        if order is None:  # the first row's (the probe's) val order and labels: every row pairs on them
            order, expected = key, [int(v) for v in y]
        if sorted(key) != sorted(order):
            continue  # other val items: not paired, as compare would not pair it
        at = [key.index(k) for k in order]
        correct[r["strategy"]] = (z.argmax(1) == y)[at]
        nll[r["strategy"]] = tempered_nll(z, y)[1][at]
    cv = frozen_head_hits(rows, result["data_used"], seed, "cpu")
    metric = (result.get("imbalance") or {}).get("metric") or ACCURACY
    selection = select(
        rows,
        correct,
        metric=metric,
        weights=item_weights(expected) if metric != ACCURACY else None,
        cv_correct={k: v["correct"] for k, v in cv.items()},
        nll=nll,
        cv_nll={k: v["nll"] for k, v in cv.items()},
    )
    was = (result.get("recommendation") or {}).get("strategy")
    print(f"  seed {seed}: recommended {was} by the kept compare, {selection['strategy']} by today's rule")
    return {k: selection[k] for k in ("strategy", "reason", "separated") if k in selection}


def cost_ratio(data: Path, backbone: str) -> dict[str, float]:
    """Cold multi-depth fit over a cold probe on `data`, each from an empty feature cache (ONNX export
    included), timed twice in the order probe, multi-depth, multi-depth, probe, keeping each one's best:
    the first call in a process also pays for imports, which must not land on one side."""
    from headstart.api import probe
    from headstart.train import fit

    quiet = {"backbone": backbone, "save": False, "progress": False}
    runs = {
        "probe_s": lambda: probe(data, **quiet),
        "multi_depth_s": lambda: fit(data, strategy="multi-depth", **quiet),
    }
    times: dict[str, float] = {}
    for name in ("probe_s", "multi_depth_s", "multi_depth_s", "probe_s"):
        with isolated_cache("headstart-bench-aps-cold-"):
            t0 = time.perf_counter()
            runs[name]()
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
    ratio = times["multi_depth_s"] / times["probe_s"]
    return {**{k: rnd(v, 2) for k, v in times.items()}, "ratio": rnd(ratio, 3)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits + fortunes, 1 seed, 120 s budget")
    p.add_argument("--tasks", help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--seeds", type=int)
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first-seed, first-seed + 1, ... (default 0): new splits and runs to check a rule on",
    )
    p.add_argument("--budget", type=float, help="compare's budget per task and seed, seconds (default 300)")
    p.add_argument("--out", type=Path, help="keep the built data and runs here")
    p.add_argument(
        "--rescore",
        type=Path,
        metavar="OUT",
        help="no new runs: read the compares an earlier run kept under OUT (its --out) and print the figures",
    )
    p.add_argument(
        "--reselect",
        action="store_true",
        help="with --rescore: each seed's recommendation made again by today's rule, from the kept runs",
    )
    p.add_argument(
        "--no-held-out",
        action="store_true",
        help="test on each task's own test split only (before session 11: 3 to 9 items per class and seed)",
    )
    p.add_argument(
        "--strategies",
        help="comma-separated rows beside the probe (default: compare's choice), e.g. multi-depth for the "
        "frozen heads alone",
    )
    return p.parse_args()


def main() -> None:
    from headstart.fileio import atomic_write_json

    args = parse_args()
    tasks = args.tasks.split(",") if args.tasks else list(QUICK_TASKS if args.quick else DEFAULT_TASKS)
    seeds = args.seeds or (1 if args.quick else 3)
    budget = args.budget or (120.0 if args.quick else 300.0)
    strategies = args.strategies.split(",") if args.strategies else None
    held_out = not args.no_held_out
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        sys.exit(f"unknown task(s) {unknown}: choose from {', '.join(TASKS)}")
    print(f"cpu: {cpu_model()}; {machine_load()}", flush=True)
    per_task: dict[str, Any] = {}
    ratio: dict[str, float] | None = None
    with Timer() as total, isolated_cache("headstart-bench-aps-") as tmp:
        root = args.rescore or args.out or tmp
        for name in tasks:
            task = TASKS[name]
            print(f"{name} ({task.backbone}):", flush=True)
            if args.rescore:
                runs = rescored(root / "runs" / name, reselect=args.reselect)
                if not runs:
                    continue
            else:
                built = task.build(root / "data")
                if ratio is None:
                    data = built if task.per_seed is None else task.per_seed(built, 0)
                    ratio = cost_ratio(data, task.backbone)
                    atomic_write_json(root / COST_FILE, ratio)
                    print(f"multi-depth cold / probe cold on {name}: {ratio}", flush=True)
                runs = []
                for seed in range(args.first_seed, args.first_seed + seeds):
                    data = built if task.per_seed is None else task.per_seed(built, seed)
                    if held_out and name in BUILDERS:
                        data = with_held_out(data, BUILDERS[name], seed, root / "data", name)
                    out = root / "runs" / name / f"seed{seed}"
                    runs.append(run_seed(task, data, seed, budget, out, strategies))
            per_task[name] = summarise(runs)
            s = per_task[name]
            print(
                f"  best new: {s['best_new']} {s['gain_vs_probe']}; recommended: {s['recommended']}",
                flush=True,
            )
    if args.rescore and (root / COST_FILE).is_file():
        ratio = json.loads((root / COST_FILE).read_text())
    emit_json(
        {
            "wins_vs_probe": sum(s["best_new_wins"] for s in per_task.values()),
            "wins_recommended": sum(s["best_new_recommended"] for s in per_task.values()),
            "recommended_beats_probe": sum(s["recommended_beats_probe"] for s in per_task.values()),
            "losses_vs_probe": sum(s["recommended_loses"] for s in per_task.values()),
            "multi_depth_cost_ratio": ratio["ratio"] if ratio else None,
            "multi_depth_cost": ratio,
            "per_task": per_task,
            "cpu": cpu_model(),
            "budget_s": budget,
            "seeds": seeds,
            "strategies": strategies or "compare's default",
            "held_out_per_class": PER_CLASS if held_out else 0,
            "elapsed_s": rnd(total.s, 1),
            "rescored_from": str(args.rescore) if args.rescore else None,
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
