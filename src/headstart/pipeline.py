"""`auto`: the whole job on one dataset, from data to a registered, calibrated model with a report.

    result = auto("examples/emoji/images", backbone="efficientnet_lite0", budget_s=180, out="runs/demo")

1. leakage: exact and near copies across train/val/test, moved so each group of copies sits in one split
   (`keep_duplicates` keeps them where they were, with a warning); the probe's score on both splits says
   how much the copies inflated it;
2. compare: the linear probe, the from-scratch baseline and the fine-tuning strategies that suit the data
   size, under one time budget, and the recommended one;
3. label-efficiency curve of the probe against the data's no-backbone baseline (pixels for images, TF-IDF
   for text, log-mel statistics for audio; cheap: cached embeddings);
4. evaluate the recommended run: metrics, temperature scaling on val, latency and memory; for an image
   run, the pretraining-overlap check (`headstart.explore.overlap`, about a second);
5. register it in the model store under an alias (`production` by default);
6. write its HTML report. The comparison, curve and leakage files are copied into the recommended run's
   folder, so the run, the stored version and the report all carry the evidence for the choice.

Everything that can fail cheaply is checked before the first backbone pass (`preflight`): the data loads
with two classes or more, the backbone exists and reads the data's modality, the output folder and the
store are writable, the model name and alias are valid. A step that cannot run on this data (the curve
without a baseline or a split to measure on) is planned as skipped, with its reason in auto.json's
"skipped", instead of failing after the budget is spent.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.runs import COMPARE_FILE, LEAKAGE_FILE
from headstart.runs.names import AUTO_FILE

CURVE_SEEDS = 2  # random subsets per curve point: enough for a spread, cheap next to the comparison
CURVE_OFF = "turned off (--no-curve)"


def preflight(
    data: str | Path,
    *,
    backbone: str,
    out: Path,
    store: str | Path | None,
    name: str | None,
    alias: str,
    curve: bool,
    seed: int,
) -> dict[str, Any]:
    """The cheap checks, in seconds: raises HeadstartError for what stops the whole job, and returns the plan
    {"store", "name", "curve_baseline" (None when skipped), "skipped": [{"step", "reason"}]}."""
    from headstart.backbones import create_backbone
    from headstart.data import load_dataset
    from headstart.fileio import ensure_writable_dir
    from headstart.store import ModelStore, check_name, data_model_name
    from headstart.verdicts.curve import check_backbone_modality, resolve_baseline

    ds = load_dataset(data, seed=seed)  # missing path, bad manifest, fewer than two classes
    bb = create_backbone(backbone)  # unknown name (with close matches); built once, reused by compare
    check_backbone_modality(bb, ds.modality, data)
    ensure_writable_dir(out, flag="--out")
    model_store = ModelStore(store)
    ensure_writable_dir(model_store.root, flag="--store")
    model_name = check_name(name) if name else data_model_name(data)
    check_name(alias)
    skipped: list[dict[str, str]] = []
    baseline = None
    if not curve:
        skipped.append({"step": "curve", "reason": CURVE_OFF})
    elif not (ds.split("test") or ds.split("val")):
        skipped.append(
            {"step": "curve", "reason": f"{data} has no test or val split to measure the curve on"}
        )
    else:
        try:
            baseline = resolve_baseline("auto", ds.modality, data)
        except HeadstartError as e:
            skipped.append({"step": "curve", "reason": e.message})
    return {"store": model_store, "name": model_name, "curve_baseline": baseline, "skipped": skipped}


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
    keep_duplicates: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = lambda _msg: None,
    device: str = "auto",
    precision: str = "auto",
    imbalance: str = "auto",
    input_size: str = "native",
    task: str = "classify",
) -> dict[str, Any]:
    """Run the steps of the module docstring; returns (and writes to OUT/auto.json) what each produced.
    `device`: where every step's network runs, `precision`: what every fine-tune trains in (checked first);
    `imbalance`, `input_size`: as compare's."""
    from headstart.evaluate import evaluate_run
    from headstart.fileio import atomic_write_json
    from headstart.report import write_report
    from headstart.runs import to_jsonable
    from headstart.train.engine import check_engine
    from headstart.verdicts.compare import compare

    if task != "classify":  # a task shape: its own strategies and paired verdicts (headstart.shapes.auto)
        return _auto_shape(task, data, locals())
    out_dir = Path(out)
    timings: dict[str, float] = {}
    result: dict[str, Any] = {
        "data": str(data),
        "backbone": backbone,
        "out": str(out_dir),
        "timings": timings,
    }

    result["device"] = str(check_engine(device, precision))  # absent device, unrun precision: refused now
    t0 = time.perf_counter()
    plan = preflight(
        data, backbone=backbone, out=out_dir, store=store, name=name, alias=alias, curve=curve, seed=seed
    )
    result["skipped"] = plan["skipped"]
    for step in plan["skipped"]:
        if step["reason"] != CURVE_OFF:  # the user's own choice needs no warning
            say(f"skipping the {step['step']}: {step['reason']}")
    timings["checks_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # compare finds copies across splits first and, unless keep_duplicates, moves each group of copies into
    # one split; every later step reads the split it used (cmp["data_used"]).
    cmp = compare(
        data,
        backbone,
        budget_s=budget_s,
        strategies=strategies,
        seed=seed,
        out=out_dir,
        keep_duplicates=keep_duplicates,
        progress=progress,
        device=device,
        precision=precision,
        imbalance=imbalance,
        input_size=input_size,
    )
    result["leakage"] = cmp["leakage"]
    leaks = cmp["leakage"]
    if (leaks["n_exact"] or leaks["n_near"]) and not leaks["regrouped"]:
        say(
            f"warning: {leaks['n_exact']} exact and {leaks['n_near']} near copies across splits inflate the "
            f"held-out scores (--keep-duplicates); see {out_dir / 'leakage.json'}"
        )
    elif leaks["regrouped"]:
        say(
            f"{leaks['n_exact']} exact and {leaks['n_near']} near copies across splits: {leaks['moved']} "
            f"item(s) moved so each group of copies sits in one split (see {out_dir / 'leakage.json'})"
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
    result.update(flags=cmp["flags"], comparison=cmp)
    for f in (COMPARE_FILE, LEAKAGE_FILE):
        shutil.copy2(out_dir / f, run_dir / f)

    if plan["curve_baseline"]:
        from headstart.verdicts.curve import label_curve

        t0 = time.perf_counter()
        try:
            label_curve(
                cmp["data_used"],
                backbone,
                seeds=CURVE_SEEDS,
                baseline=plan["curve_baseline"],
                out=run_dir,
                seed=seed,
                progress=progress,
                device=device,
            )
        except HeadstartError as e:  # after the budget is spent: keep the comparison, skip the curve
            plan["skipped"].append({"step": "curve", "reason": e.message})
            say(f"skipping the curve: {e.message}")
        timings["curve_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ev = evaluate_run(run_dir, progress=progress, device=device)
    timings["evaluate_s"] = time.perf_counter() - t0
    cal = ev.get("calibration") or {}
    result["evaluation"] = {
        "test_accuracy": ev["metrics"]["accuracy"],
        "ece_before": cal.get("ece_before"),
        "ece_after": cal.get("ece_after"),
        "temperature": cal.get("temperature"),
        "calibration_status": cal.get("status"),
        "calibration_reason": cal.get("reason"),
        "latency": ev.get("latency"),
    }

    result["overlap"] = _overlap(run_dir, plan["skipped"], say, timings, progress=progress, device=device)
    t0 = time.perf_counter()
    result["report"] = str(write_report(run_dir))
    timings["report_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model_store, model_name = plan["store"], plan["name"]
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


def _auto_shape(task: str, data: str | Path, options: dict[str, Any]) -> dict[str, Any]:
    from headstart.shapes import shape_of_task
    from headstart.shapes.auto import auto_shape

    keys = ("backbone", "budget_s", "out", "strategies", "store", "name", "alias", "seed", "progress")
    shape = shape_of_task(task)
    assert shape is not None
    return auto_shape(shape, data, device=options["device"], **{k: options[k] for k in keys})


def _overlap(
    run_dir: Path,
    skipped: list[dict[str, str]],
    say: Callable[[str], None],
    timings: dict[str, float],
    **kw: Any,
) -> dict[str, Any] | None:
    """The pretraining-overlap check of an image run (about a second on the emoji example: the test
    split's embeddings are cached by then); a text run's LM check takes minutes, so it is left to
    `headstart overlap RUN`."""
    from headstart.explore.overlap import check_overlap
    from headstart.runs import load_run_info

    if load_run_info(run_dir).modality not in (None, "image"):
        skipped.append({"step": "overlap", "reason": f"not an image run: run `headstart overlap {run_dir}`"})
        return None
    t0 = time.perf_counter()
    try:
        r = check_overlap(run_dir, **kw)
    except HeadstartError as e:
        skipped.append({"step": "overlap", "reason": e.message})
        say(f"skipping the overlap check: {e.message}")
        return None
    finally:
        timings["overlap_s"] = time.perf_counter() - t0
    if not r["supported"]:
        return {"supported": False, "reason": r["reason"]}
    return {"n": r["n"], "n_overlap": r["n_overlap"], "accuracy": r["accuracy"]}
