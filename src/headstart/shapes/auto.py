"""`auto --task T` for a task shape: its strategies under one budget, a paired verdict, then evaluate,
report and register the recommended run.

The comparison is the shape's own strategies (`Shape.auto_strategies`: the probe, then the fine-tunes
the shape trains), each run into OUT/<strategy>. They are judged on the validation split, item by item:
`Shape.item_scores(run, "val")` gives one score per item (higher is better: minus the absolute error of
a regression, the per-item F1 of a label set, a sentence's entity F1, minus a response's loss), and a
fine-tune is recommended over the probe only when its mean gain's paired bootstrap 95 % interval lies
above zero. Inside the noise the verdict is a tie and the cheaper run (the probe) is kept. The test split
is scored for every row and reported, never used to choose.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.runs.names import SHAPE_COMPARE_FILE
from headstart.shapes import Shape


def paired_gain(a: np.ndarray, b: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Mean of a - b over the same items, its paired bootstrap 95 % interval, and whether a wins (the
    interval above 0), loses (below) or ties."""
    from headstart.intervals import bootstrap_indices

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    if not len(a):
        return {"diff": None, "ci": None, "n": 0, "verdict": "tie"}
    d = a - b
    boot = d[bootstrap_indices(len(d), seed=seed)].mean(axis=1)
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    return {"diff": float(d.mean()), "ci": [lo, hi], "n": len(d), "verdict": verdict}


def compare_shape(
    shape: Shape,
    data: str | Path,
    *,
    backbone: str,
    budget_s: float,
    out: Path,
    strategies: list[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Run each strategy (the probe first: it is the reference), then the paired verdicts on val."""
    from headstart.config import FitConfig, ProbeConfig
    from headstart.fileio import atomic_write_json

    if not shape.auto_strategies:
        raise HeadstartError(
            f"auto --task {shape.name} has no probe to compare fine-tunes against",
            fix=f"headstart fit {data} --task {shape.name} (then evaluate, report and models register)",
        )
    chosen = strategies or list(shape.auto_strategies)
    if not chosen or chosen[0] != "head":
        chosen = ["head", *[s for s in chosen if s != "head"]]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, strategy in enumerate(chosen):
        run_dir = out / strategy.replace(":", "-")
        left = budget_s - (time.perf_counter() - started)
        common = {"data": data, "backbone": backbone, "out": run_dir, "overwrite": True, "seed": seed}
        common |= {"task": shape.name, "progress": progress, "device": device}
        t0 = time.perf_counter()
        try:
            if strategy == "head":
                report = shape.probe(ProbeConfig(**common))
            else:
                share = max(left / (len(chosen) - i), 1.0)
                report = shape.fit(FitConfig(**common, strategy=strategy, budget_s=share))
        except HeadstartError as e:
            rows.append({"strategy": strategy, "error": e.message})
            continue
        scores = shape.item_scores(run_dir, "val")
        test = shape.item_scores(run_dir, "test")
        rows.append(
            {
                "strategy": strategy,
                "run_dir": str(run_dir),
                "seconds": time.perf_counter() - t0,
                "val_score": None if scores is None else float(np.mean(scores)),
                "test_score": None if test is None else float(np.mean(test)),
                "metrics": report.metrics,
                "_val": scores,
                "_test": test,
            }
        )
    result = _verdicts(shape, rows, seed=seed)
    result |= {"task": shape.name, "backbone": backbone, "data": str(data), "budget_s": budget_s}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SHAPE_COMPARE_FILE, result)
    return result


def _verdicts(shape: Shape, rows: list[dict[str, Any]], *, seed: int) -> dict[str, Any]:
    """Each fine-tune against the probe on val (and, for the record, on test); the recommendation."""
    probe = next((r for r in rows if r["strategy"] == "head" and r.get("_val") is not None), None)
    if probe is None:
        raise HeadstartError(
            f"the {shape.name} probe did not finish: {next((r.get('error') for r in rows), 'no rows')}",
            fix="fix the error above (data, backbone), then rerun",
        )
    best, reason = probe, "the probe: no fine-tune beat it beyond the noise on val (a tie keeps the cheaper)"
    for r in rows:
        if r is probe or r.get("_val") is None:
            continue
        r["vs_probe_val"] = paired_gain(r["_val"], probe["_val"], seed=seed)
        if r.get("_test") is not None and probe.get("_test") is not None:
            r["vs_probe_test"] = paired_gain(r["_test"], probe["_test"], seed=seed)
        gain = r["vs_probe_val"]
        if gain["verdict"] == "win" and (best is probe or gain["diff"] > best["vs_probe_val"]["diff"]):
            lo, hi = gain["ci"]
            best = r
            reason = (
                f"{r['strategy']} beat the probe on val by {gain['diff']:+.4f} per item "
                f"[{lo:+.4f}, {hi:+.4f}] ({shape.item_score_name})"
            )
    for r in rows:
        r.pop("_val", None)
        r.pop("_test", None)
    return {
        "rows": rows,
        "item_score": shape.item_score_name,
        "recommendation": {"strategy": best["strategy"], "run_dir": best["run_dir"], "reason": reason},
    }


def auto_shape(
    shape: Shape,
    data: str | Path,
    *,
    backbone: str,
    budget_s: float,
    out: str | Path,
    strategies: list[str] | None = None,
    store: str | Path | None = None,
    name: str | None = None,
    alias: str = "production",
    seed: int = 0,
    progress: bool = True,
    device: str = "auto",
    **_ignored: Any,
) -> dict[str, Any]:
    """compare_shape, then evaluate, report and register the recommended run (auto.json in OUT)."""
    import shutil

    from headstart.fileio import atomic_write_json, ensure_writable_dir
    from headstart.report import write_report
    from headstart.runs import to_jsonable
    from headstart.runs.names import AUTO_FILE
    from headstart.store import ModelStore, check_name, data_model_name

    out_dir = ensure_writable_dir(out, flag="--out")  # the cheap checks first
    model_store = ModelStore(store)
    ensure_writable_dir(model_store.root, flag="--store")
    model_name = check_name(name) if name else data_model_name(data)
    check_name(alias)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cmp = compare_shape(
        shape,
        data,
        backbone=backbone,
        budget_s=budget_s,
        out=out_dir,
        strategies=strategies,
        seed=seed,
        progress=progress,
        device=device,
    )
    timings["compare_s"] = time.perf_counter() - t0
    rec = cmp["recommendation"]
    run_dir = Path(rec["run_dir"])
    shutil.copy2(out_dir / SHAPE_COMPARE_FILE, run_dir / SHAPE_COMPARE_FILE)
    t0 = time.perf_counter()
    ev = shape.evaluate(run_dir, progress=progress, device=device)
    timings["evaluate_s"] = time.perf_counter() - t0
    report = write_report(run_dir)
    try:
        version = model_store.register(run_dir, model_name, alias=alias)
    except HeadstartError as e:  # e.g. the behaviour gate: what auto kept, and the command to go on with
        from headstart.store.behaviour import ACCEPT_FLAG

        accept = f" [{ACCEPT_FLAG}]" if ACCEPT_FLAG in (e.fix or "") else ""  # a store option, not auto's
        command = f"headstart models register {run_dir} --name {model_name} --alias {alias}"
        raise HeadstartError(
            f"auto chose, evaluated and reported {run_dir} ({report}) but did not register it: {e.message}",
            fix=f"{e.fix or 'fix the above'}. Then register it yourself: "
            f"`{command} --store {model_store.root}{accept}`",
        ) from e
    result = {
        "task": shape.name,
        "data": str(data),
        "backbone": backbone,
        "out": str(out_dir),
        "comparison": cmp,
        "recommended": rec,
        "evaluation": ev,
        "report": str(report),
        "registered": {
            "store": str(model_store.root),
            "name": model_name,
            "version": version,
            "alias": alias,
        },
        "timings": timings,
    }
    atomic_write_json(out_dir / AUTO_FILE, to_jsonable(result))
    return result
