"""`auto`: the whole job on one dataset, from data to a registered, calibrated model with a report.

    result = auto("examples/emoji/images", backbone="efficientnet_lite0", budget_s=180, out="runs/demo")

1. leakage: exact and near copies across train/val/test (warned about, never silently kept);
2. compare: the linear probe, the from-scratch baseline and the fine-tuning strategies that suit the data
   size, under one time budget, and the recommended one;
3. label-efficiency curve of the probe against a pixel baseline (cheap: cached embeddings);
4. evaluate the recommended run: metrics, temperature scaling on val, latency and memory;
5. register it in the model store under an alias (`production` by default);
6. write its HTML report. The comparison, curve and leakage files are copied into the recommended run's
   folder, so the run, the stored version and the report all carry the evidence for the choice.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

AUTO_FILE = "auto.json"
CURVE_SEEDS = 2  # random subsets per curve point: enough for a spread, cheap next to the comparison
# Data folders named like this say nothing about the model: it is named after their parent instead.
GENERIC_FOLDER_NAMES = {"images", "data", "train", "dataset"}


def auto(
    data: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    budget_s: float = 300.0,
    out: str | Path = "runs/auto",
    strategies: list[str] | None = None,
    store: str | Path | None = None,
    name: str | None = None,
    alias: str = "production",
    curve: bool = True,
    seed: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Run the steps of the module docstring; returns (and writes to OUT/auto.json) what each produced."""
    from headstart.data import load_dataset
    from headstart.data.leakage import find_leaks
    from headstart.evaluate import evaluate_run
    from headstart.fileio import atomic_write_json
    from headstart.report import write_report
    from headstart.runs import to_jsonable
    from headstart.store import ModelStore, default_name
    from headstart.verdicts.compare import compare

    out_dir = Path(out)
    timings: dict[str, float] = {}
    result: dict[str, Any] = {
        "data": str(data),
        "backbone": backbone,
        "out": str(out_dir),
        "timings": timings,
    }

    t0 = time.perf_counter()
    ds = load_dataset(data, seed=seed)  # the split every later step uses (same data, same seed)
    leaks = find_leaks(ds)
    atomic_write_json(out_dir / "leakage.json", to_jsonable(leaks))
    timings["leakage_s"] = time.perf_counter() - t0
    result["leakage"] = {"n_exact": leaks["n_exact"], "n_near": leaks["n_near"]}
    if leaks["n_exact"] or leaks["n_near"]:
        say(
            f"warning: {leaks['n_exact']} exact and {leaks['n_near']} near copies across splits inflate the "
            f"held-out scores; see {out_dir / 'leakage.json'} and `headstart leakage {data} --dedupe FILE`"
        )

    t0 = time.perf_counter()
    cmp = compare(
        data, backbone, budget_s=budget_s, strategies=strategies, seed=seed, out=out_dir, progress=progress
    )
    timings["compare_s"] = time.perf_counter() - t0
    rec = cmp["recommendation"]
    chosen = next((r for r in cmp["rows"] if r["strategy"] == rec.get("strategy")), None)
    if chosen is None or not chosen.get("run_dir"):
        raise HeadstartError(
            f"no strategy could be recommended for {data} ({rec.get('reason', 'no finished runs')})",
            fix="give a larger --budget",
        )
    run_dir = Path(chosen["run_dir"])
    result["recommended"] = {
        "strategy": rec["strategy"],
        "reason": rec.get("reason"),
        "run_dir": str(run_dir),
    }
    result["compare"] = {
        r["strategy"]: {"val_accuracy": r.get("val_accuracy"), "test_accuracy": r.get("test_accuracy")}
        for r in cmp["rows"]
    }
    result["flags"] = cmp["flags"]
    for f in ("compare.json", "leakage.json"):
        shutil.copy2(out_dir / f, run_dir / f)

    if curve:
        from headstart.verdicts.curve import label_curve

        t0 = time.perf_counter()
        label_curve(
            data, backbone, seeds=CURVE_SEEDS, baseline="pixels", out=run_dir, seed=seed, progress=progress
        )
        timings["curve_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ev = evaluate_run(run_dir, progress=progress)
    timings["evaluate_s"] = time.perf_counter() - t0
    cal = ev.get("calibration") or {}
    result["evaluation"] = {
        "test_accuracy": ev["metrics"]["accuracy"],
        "ece_before": cal.get("ece_before"),
        "ece_after": cal.get("ece_after"),
        "temperature": cal.get("temperature"),
        "latency": ev.get("latency"),
    }

    t0 = time.perf_counter()
    result["report"] = str(write_report(run_dir))
    timings["report_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model_store = ModelStore(store)
    folder = Path(data).resolve()
    if folder.name in GENERIC_FOLDER_NAMES:
        folder = folder.parent
    model_name = name or default_name(folder)
    version = model_store.register(run_dir, model_name, alias=alias)
    timings["register_s"] = time.perf_counter() - t0
    result["registered"] = {
        "store": str(model_store.root),
        "name": model_name,
        "version": version,
        "alias": alias,
    }
    atomic_write_json(out_dir / AUTO_FILE, to_jsonable(result))
    return result
