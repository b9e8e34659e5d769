"""Evaluate a run: metrics, calibration (temperature fitted on val), out-of-distribution scores,
latency and memory. On the run's own split, writes calibration.json and evaluation.json into the run
folder; on other data (`data` given) writes nothing into the run, only to `out` when given.

    result = evaluate_run("runs/demo")                       # the run's own test split
    result = evaluate_run("runs/demo", "new-photos/", out="new-photos-eval.json")  # another folder
    result = evaluate_run("runs/demo", ood="other-pictures/")

What gets evaluated:
- `data=None`: the run's own `split.csv` rows of `split` (default "test"), found by the run folder's one
  resolver (`headstart.runs.item_sources`: under the data root run.json records; an older run's paths from
  the current folder, then the run's).
- `data` given: a folder with class sub-folders is evaluated whole (every file, however few per class); a
  folder with `train/ val/ test/`, or a manifest with a `split` column, gives its `split` rows; a
  manifest without one is evaluated whole. Labels the run does not know are counted and left out.
The temperature is fitted on the run's own validation rows only when its own split is evaluated
(`calibrate_temperature` decides whether to apply it: too few val errors, or no gain on held-out val
folds, keep T = 1 with the reason). Evaluating other data uses the T in the run's calibration.json as
it stands: foreign data never refits it.
Slices: when items carry a slice (a `group` column of the data, kept in split.csv; or `slices=FILE`),
every headline score is also given per slice with its gap to overall (`headstart.slices`, "slices").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.calibration import applied_temperature, calibrate_temperature, ece, reliability, softmax
from headstart.data.text import table_columns
from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_json
from headstart.latency import measure_latency, peak_rss_mb
from headstart.metrics import classification_metrics
from headstart.ood import ood_scores
from headstart.runs import (
    CALIBRATION_FILE,
    EVALUATION_FILE,
    SPLIT_FILE,
    RunInfo,
    item_sources,
    read_calibration,
    read_run_json,
    read_split_rows,
    run_info_of,
)
from headstart.slices import groups_from_file, read_slice_file, slice_scores

N_MISTAKES = 16


# -- what to evaluate ------------------------------------------------------------------------------------
def _run_rows(run_dir: Path, split: str, info: RunInfo) -> tuple[list[str], list[str], list[str | None]]:
    """(sources, labels, slices) of the run's own split.csv rows of `split`."""
    rows = [r for r in read_split_rows(run_dir, fix="give DATA to evaluate on") if r.split == split]
    return item_sources(run_dir, rows, info), [r.label for r in rows], [r.group or None for r in rows]


def _has_own_split(root: Path) -> bool:
    if root.is_dir():
        return any((root / s).is_dir() for s in ("train", "val", "test"))
    return "split" in table_columns(root)


def data_items(
    data: str | Path, split: str, modality: str
) -> tuple[list[str], list[str], list[str | None], str]:
    """(sources, labels, slices, description) of what to evaluate in `data` (see the module docstring)."""
    from headstart.data import SPLITS, load_dataset
    from headstart.data.layouts import from_class_folders, read_manifest

    root = Path(data).expanduser()
    if not root.exists():
        raise HeadstartError(f"data path not found: {root}", fix="check the path")
    own = _has_own_split(root)
    if modality == "text":  # tables and .txt folders: the text reader knows them
        items = load_dataset(root, modality="text").items
    elif own and root.is_dir():
        items = [it for s in SPLITS if (root / s).is_dir() for it in from_class_folders(root / s, s)]
    elif root.is_dir():
        items = from_class_folders(root, None)  # read directly: too few per class to split is fine here
    else:
        items = read_manifest(root)
    if own:
        items = [it for it in items if it.split == split]
        if not items:
            raise HeadstartError(f"{root} has no {split!r} items", fix="choose another --split")
    if not items:
        raise HeadstartError(f"no labeled items under {root}", fix="use one sub-folder per class")
    described = f"{root} ({split} split)" if own else f"{root} (all items)"
    return [it.source for it in items], [it.label for it in items], [it.group for it in items], described


# -- calibration ---------------------------------------------------------------------------------------
def _calibrate(
    model: Any, run_dir: Path, *, backend: str, progress: bool, device: str = "auto"
) -> dict[str, Any] | None:
    """Fit T on the run's validation rows: calibration.json's content, or None without val rows."""
    sources, labels, _ = _run_rows(run_dir, "val", model.run_info)
    t, known = model.targets(labels)
    if not sources or not known.any():
        return None
    chosen = [sources[i] for i in np.flatnonzero(known)]
    z, kept, _ = model.logits(chosen, backend=backend, progress=progress, device=device)
    y = t[np.flatnonzero(known)][kept]
    if len(y) == 0:
        return None
    return calibrate_temperature(z, y)


def _recorded_calibration(run_dir: Path) -> dict[str, Any]:
    """The run's calibration.json as it stands (used, never rewritten, when evaluating other data)."""
    f = run_dir / CALIBRATION_FILE
    if not f.is_file():
        return {
            "temperature": 1.0,
            "status": "skipped",
            "reason": "the run has no calibration.json (evaluate its own split, without DATA, to fit T)",
        }
    try:
        cal = read_calibration(run_dir)
    except HeadstartError:
        cal = None
    record = cal.record if cal is not None and cal.record else {"temperature": None}
    T, warning = applied_temperature(record)
    if warning:
        return {**record, "temperature": 1.0, "status": "skipped", "reason": warning}
    status = record.get("status") or "applied"  # written before statuses existed: it was applied
    return {**record, "temperature": T, "status": status, "reason": record.get("reason", "")}


def _calibration(
    model: Any, run_dir: Path, own_split: bool, *, backend: str, progress: bool, device: str = "auto"
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the calibration to apply, what to write to calibration.json or None). Refitted on the run's own
    val rows only when its own split is evaluated; otherwise (or without val rows) the recorded one."""
    fitted = (
        _calibrate(model, run_dir, backend=backend, progress=progress, device=device) if own_split else None
    )
    if fitted is not None:
        return fitted, fitted
    cal = {**_recorded_calibration(run_dir), "fitted_on": None, "n": 0}
    cal["source"] = f"{run_dir / CALIBRATION_FILE} (not refitted)"
    return cal, None


def _calibration_summary(z: np.ndarray, y: np.ndarray, cal: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """ECE and reliability before and after the temperature, and where the temperature came from."""
    T = float(cal["temperature"])
    p_before, p_after = softmax(z), softmax(z / T)
    return {
        "ece_before": ece(p_before, y),
        "ece_after": ece(p_after, y),
        "temperature": T,
        "applied_temperature": T,
        "fitted_temperature": cal.get("fitted_temperature"),
        "status": cal["status"],
        "reason": cal["reason"],
        "fitted_on": cal.get("fitted_on"),
        "n_fit": cal.get("n", 0),
        "source": cal.get("source", f"fitted now on {run_dir}/{SPLIT_FILE} val rows"),
        "reliability_before": reliability(p_before, y),
        "reliability_after": reliability(p_after, y),
    }


# -- mistakes --------------------------------------------------------------------------------------------
def _mistakes(
    sources: list[str], y: np.ndarray, z: np.ndarray, T: float, classes: list[str]
) -> list[dict[str, Any]]:
    """The N_MISTAKES wrong predictions the model was most confident in (calibrated), most confident first."""
    pred = z.argmax(axis=1)
    conf = softmax(z / T).max(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:N_MISTAKES]
    return [
        {
            "source": sources[i],
            "label": classes[y[i]],
            "pred": classes[pred[i]],
            "confidence": float(conf[i]),
        }
        for i in wrong
    ]


# -- the evaluation --------------------------------------------------------------------------------------
def _items_to_evaluate(
    run_dir: Path, data: str | Path | None, split: str, info: RunInfo
) -> tuple[list[str], list[str], list[str | None], str]:
    """(sources, labels, slices, description): the run's own `split` rows, or `data`'s (see the module
    docstring)."""
    if data is not None:
        return data_items(data, split, info.modality or "image")
    sources, labels, groups = _run_rows(run_dir, split, info)
    if not sources:
        raise HeadstartError(
            f"{run_dir} has no {split!r} rows in {SPLIT_FILE}", fix="choose another --split, or give DATA"
        )
    return sources, labels, groups, f"{run_dir}/{SPLIT_FILE} ({split} split)"


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    split: str = "test",
    ood: str | Path | None = None,
    latency: bool = True,
    backend: str = "auto",
    save: bool = True,
    out: str | Path | None = None,
    progress: bool = False,
    device: str = "auto",
    slices: str | Path | None = None,
    tta: int = 0,
) -> dict[str, Any]:
    """Evaluate a run folder. On its own split (`data=None`) write calibration.json and evaluation.json
    into it (unless save=False); on other data write nothing into it. `out`: also write the result there.
    `device`: where the network runs (headstart.features.forward_device; recorded as `device`).
    `slices`: a CSV of path,group (texts: text,group) naming each item's slice, instead of the data's own
    `group` column; every score is then also given per slice (`headstart.slices`).
    `tta`: also score each image with K augmented views (headstart.tta), against the plain prediction.
    """
    from headstart.features import forward_device
    from headstart.model import load_model
    from headstart.shapes import shape_of_run
    from headstart.store import is_stored_version

    run_dir = Path(run_dir)
    own_split = data is None
    writes_run = save and own_split  # other data never overwrites what describes the run's own split
    if writes_run and is_stored_version(run_dir):
        raise HeadstartError(
            f"{run_dir} is a stored model version, which is never modified",
            fix="evaluate the run folder before registering it, or pass save=False",
        )
    out_path = _check_out(out, run_dir, own_split) if out is not None else None
    shape = shape_of_run(run_dir)
    if shape is not None and tta:
        raise HeadstartError(
            f"test-time augmentation scores classification runs; {run_dir} is a {shape.name} run",
            fix="drop --tta",
        )
    if shape is not None:  # its own scores (headstart.shapes): the checks above done, the same keywords
        return shape.evaluate(
            run_dir,
            data=data,
            split=split,
            ood=ood,
            latency=latency,
            backend=backend,
            save=save,
            out=out_path,
            progress=progress,
            device=device,
            slices=slices,
        )
    used = forward_device(backend, device)  # an absent device is refused before the run is loaded
    slice_map, origin = None, f"the group column of {SPLIT_FILE if own_split else data}"
    if slices is not None:  # read before the run is loaded: a bad slice file fails at once
        modality = run_info_of(run_dir, read_run_json(run_dir)).modality or "image"
        slice_map, origin = read_slice_file(slices, modality), f"--slices {slices}"
    t_start = time.perf_counter()
    model = load_model(run_dir)
    if tta:
        from headstart.tta import check_tta

        check_tta(model, tta)  # before anything is embedded
    classes = model.classes
    sources, labels, groups, described = _items_to_evaluate(run_dir, data, split, model.run_info)
    if slice_map is not None and slices is not None:  # the file replaces the data's own groups
        groups = groups_from_file(sources, slice_map, model.run_info.modality or "image", slices)
    t, known = model.targets(labels)
    unknown_labels = sorted({labels[i] for i in np.flatnonzero(~known)})
    usable = np.flatnonzero(known)
    z, kept, bad = model.logits(
        [sources[i] for i in usable], backend=backend, progress=progress, device=device
    )
    if len(kept) == 0:
        listed = "; ".join(f"{p}: {r}" for p, r in list(bad.items())[:3])
        raise HeadstartError(
            f"none of the {len(sources)} items of {described} could be read ({listed})",
            fix=f"restore the data {SPLIT_FILE} lists (under the data_root in run.json; an older run's paths "
            "are relative to the folder `probe` ran in: run from there), or give DATA",
        )
    idx = usable[kept]
    y = t[idx]
    # A new calibration is written with evaluation.json at the end, so a failure later changes neither.
    cal, new_calibration = _calibration(
        model, run_dir, own_split, backend=backend, progress=progress, device=device
    )
    T = float(cal["temperature"])
    result: dict[str, Any] = {
        "run": str(run_dir),
        "data": described,
        "split": split,
        "device": str(used),
        "n": len(y),
        "classes": classes,
        "skipped": bad,
        "unknown_labels": {"labels": unknown_labels, "n": int((~known).sum())},
        "metrics": classification_metrics(y, z.argmax(axis=1), classes),
        "calibration": _calibration_summary(z, y, cal, run_dir),
        "ood": None
        if ood is None
        else ood_scores(model, Path(ood), z, T, backend=backend, progress=progress, device=device),
        "latency": measure_latency(model, sources[idx[0]], backend=backend, device=device)
        if latency
        else None,
        "memory": {},
        "mistakes": _mistakes([sources[i] for i in idx], y, z, T, classes),
        "slices": slice_scores(
            y, z.argmax(axis=1), [groups[i] for i in idx], [sources[i] for i in idx], classes, origin=origin
        ),
        "tta": None,
        "seconds": 0.0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if tta:
        from headstart.tta import tta_report

        kept_sources = [sources[i] for i in idx]
        result["tta"] = tta_report(
            model, kept_sources, y, z, tta, backend=backend, device=device, progress=progress
        )
    result["memory"] = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    result["seconds"] = time.perf_counter() - t_start
    if writes_run:
        if new_calibration is not None:
            atomic_write_json(run_dir / CALIBRATION_FILE, new_calibration)
        atomic_write_json(run_dir / EVALUATION_FILE, result)
    if out_path is not None:
        atomic_write_json(out_path, result)
    return result


def _check_out(out: str | Path, run_dir: Path, own_split: bool) -> Path:
    """Refuse, before any work, an `out` that cannot be written or would replace the run's own files."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise HeadstartError(f"--out {path} is a folder", fix="give a file name, e.g. evaluation-other.json")
    if not path.parent.is_dir():
        raise HeadstartError(
            f"--out {path}: its folder {path.parent} does not exist", fix="create it, or give another path"
        )
    own = {(run_dir / f).resolve() for f in (EVALUATION_FILE, CALIBRATION_FILE)}
    if not own_split and path.resolve() in own:
        raise HeadstartError(
            f"--out {path} would replace the run's own {path.name}, which describes its own split",
            fix="write other data's evaluation elsewhere, e.g. --out evaluation-other.json",
        )
    return path
