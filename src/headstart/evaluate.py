"""Evaluate a run: metrics, calibration (temperature fitted on val), out-of-distribution scores,
latency and memory. On the run's own split, writes calibration.json and evaluation.json into the run
folder; on other data (`data` given) writes nothing into the run, only to `out` when given.

    result = evaluate_run("runs/demo")                       # the run's own test split
    result = evaluate_run("runs/demo", "new-photos/", out="new-photos-eval.json")  # another folder
    result = evaluate_run("runs/demo", ood="other-pictures/")

What gets evaluated:
- `data=None`: the run's own `split.csv` rows of `split` (default "test"); relative paths resolve against
  the current folder, as `probe` wrote them.
- `data` given: a folder with class sub-folders is evaluated whole (every file, however few per class); a
  folder with `train/ val/ test/`, or a manifest with a `split` column, gives its `split` rows; a
  manifest without one is evaluated whole. Labels the run does not know are counted and left out.
The temperature is fitted on the run's own validation rows only when its own split is evaluated
(`calibrate_temperature` decides whether to apply it: too few val errors, or no gain on held-out val
folds, keep T = 1 with the reason). Evaluating other data uses the T in the run's calibration.json as
it stands: foreign data never refits it.
"""

from __future__ import annotations

import csv
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.calibration import applied_temperature, calibrate_temperature, ece, reliability, softmax
from headstart.errors import HeadstartError
from headstart.fileio import atomic_write_json
from headstart.metrics import classification_metrics

EVALUATION_FILE = "evaluation.json"
N_MISTAKES = 16


# -- ranking ---------------------------------------------------------------------------------------------
def auroc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney U)."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    truth = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    return float(roc_auc_score(truth, np.concatenate([pos, neg])))


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Negative free energy, logsumexp(logits): higher means more in-distribution (Liu et al. 2020)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


# -- what to evaluate ------------------------------------------------------------------------------------
def read_split_csv(run_dir: Path) -> list[dict[str, str]]:
    f = run_dir / "split.csv"
    if not f.is_file():
        raise HeadstartError(
            f"{run_dir} has no split.csv, so its own splits are unknown", fix="give DATA to evaluate on"
        )
    with open(f, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _text_sources(run_dir: Path, modality: str) -> dict[str, str]:
    """For items that are not files (texts), map split.csv's row ids back to the items' text."""
    if modality != "text":
        return {}
    from headstart.data import load_dataset

    try:
        summary = json.loads((run_dir / "data.json").read_text())
        ds = load_dataset(summary["root"], modality=modality, seed=int(summary.get("seed", 0)))
    except (OSError, KeyError, ValueError, HeadstartError):
        return {}
    return {str(it.path): it.source for it in ds.items}


def _run_rows(run_dir: Path, split: str, modality: str) -> tuple[list[str], list[str]]:
    rows = [r for r in read_split_csv(run_dir) if r.get("split") == split]
    sources = _text_sources(run_dir, modality)
    return [sources.get(r["path"], r["path"]) for r in rows], [r["label"] for r in rows]


def _columns(path: Path) -> list[str]:
    """Column names of a CSV / JSONL / Parquet manifest, reading only its head."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            if path.suffix.lower() == ".jsonl":
                first = next((ln for ln in f if ln.strip()), "{}")
                obj = json.loads(first)
                return list(obj) if isinstance(obj, dict) else []
            return next(csv.reader(f), [])
    except (OSError, ValueError):
        return []


def _has_own_split(root: Path) -> bool:
    if root.is_dir():
        return any((root / s).is_dir() for s in ("train", "val", "test"))
    return "split" in _columns(root)


def data_items(data: str | Path, split: str, modality: str) -> tuple[list[str], list[str], str]:
    """(sources, labels, description) of what to evaluate in `data` (see the module docstring)."""
    from headstart.data import load_dataset
    from headstart.data.dataset import SPLITS, _from_class_folders, _read_manifest

    root = Path(data).expanduser()
    if not root.exists():
        raise HeadstartError(f"data path not found: {root}", fix="check the path")
    own = _has_own_split(root)
    if modality == "text":  # tables and .txt folders: the text reader knows them
        items = load_dataset(root, modality="text").items
    elif own and root.is_dir():
        items = [it for s in SPLITS if (root / s).is_dir() for it in _from_class_folders(root / s, s)]
    elif root.is_dir():
        items = _from_class_folders(root, None)  # read directly: too few per class to split is fine here
    else:
        items = _read_manifest(root)
    if own:
        items = [it for it in items if it.split == split]
        if not items:
            raise HeadstartError(f"{root} has no {split!r} items", fix="choose another --split")
        return [it.source for it in items], [it.label for it in items], f"{root} ({split} split)"
    if not items:
        raise HeadstartError(f"no labeled items under {root}", fix="use one sub-folder per class")
    return [it.source for it in items], [it.label for it in items], f"{root} (all items)"


def _targets(labels: Sequence[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(class index or -1, mask of labels the model knows)."""
    index = {c: i for i, c in enumerate(classes)}
    t = np.array([index.get(str(lab), -1) for lab in labels], dtype=np.int64)
    return t, t >= 0


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# -- timing and memory -----------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _ms(ts: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ts) * 1000, q))


def _timed(fn: Any, x: Any, repeats: int, per: int = 1) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) / per)
    return out


def measure_latency(
    model: Any, source: str, *, repeats: int = 30, batch: int = 32, backend: str = "auto"
) -> dict[str, Any]:
    """Forward time of one preprocessed item and of a batch through `model.module()` (torch, inference
    mode, file decode excluded), decode+preprocess+forward of one file (end to end), and, where the
    backbone runs through ONNX Runtime (what embedding and predict use), the same two forward figures."""
    import torch

    bb = model.backbone
    module = model.module()
    example = bb.load_item(source)
    one, many = bb.collate([example]), bb.collate([example] * batch)
    plain = (one, many)  # ONNX Runtime reads plain contiguous arrays
    if bb.modality == "image":  # the layout the torch embedding path uses too (faster on CPU)
        module = module.to(memory_format=torch.channels_last)
        one, many = (t.contiguous(memory_format=torch.channels_last) for t in (one, many))
    batch_repeats = max(3, repeats // 6)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: first calls allocate and pick kernels
            module(one)
        single = _timed(module, one, repeats)
        module(many)
        batched = _timed(module, many, batch_repeats, per=batch)
        end_to_end = _timed(lambda s: module(bb.collate([bb.load_item(s)])), source, max(5, repeats // 3))
    out: dict[str, Any] = {
        "single_p50_ms": _ms(single, 50),
        "single_p95_ms": _ms(single, 95),
        f"batch{batch}_per_item_ms": _ms(batched, 50),
        "end_to_end_p50_ms": _ms(end_to_end, 50),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "backend": "torch eager",
    }
    if backend in ("auto", "onnx") and bb.supports_onnx:
        from headstart.features import make_forward

        forward, used = make_forward(bb, backend)
        if used == "onnx":
            head = model.head

            def onnx_logits(x: Any) -> Any:
                return head.logits(forward(x))

            for _ in range(3):
                onnx_logits(plain[0])
            single = _timed(onnx_logits, plain[0], repeats)
            out["onnx_single_p50_ms"] = _ms(single, 50)
            out["onnx_single_p95_ms"] = _ms(single, 95)
            out[f"onnx_batch{batch}_per_item_ms"] = _ms(
                _timed(onnx_logits, plain[1], batch_repeats, per=batch), 50
            )
    return out


# -- the evaluation --------------------------------------------------------------------------------------
def _calibrate(model: Any, run_dir: Path, *, backend: str, progress: bool) -> dict[str, Any] | None:
    """Fit T on the run's validation rows: calibration.json's content, or None without val rows."""
    sources, labels = _run_rows(run_dir, "val", model.modality)
    t, known = _targets(labels, model.classes)
    if not sources or not known.any():
        return None
    z, kept, _ = model.logits([sources[i] for i in np.flatnonzero(known)], backend=backend, progress=progress)
    y = t[np.flatnonzero(known)][kept]
    if len(y) == 0:
        return None
    return calibrate_temperature(z, y)


def _recorded_calibration(run_dir: Path) -> dict[str, Any]:
    """The run's calibration.json as it stands (used, never rewritten, when evaluating other data)."""
    from headstart.model import CALIBRATION_FILE

    f = run_dir / CALIBRATION_FILE
    if not f.is_file():
        return {
            "temperature": 1.0,
            "status": "skipped",
            "reason": "the run has no calibration.json (evaluate its own split, without DATA, to fit T)",
        }
    try:
        record = json.loads(f.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        record = {"temperature": None}
    T, warning = applied_temperature(record)
    if warning:
        return {**record, "temperature": 1.0, "status": "skipped", "reason": warning}
    status = record.get("status") or "applied"  # written before statuses existed: it was applied
    return {**record, "temperature": T, "status": status, "reason": record.get("reason", "")}


def _ood(
    model: Any, path: Path, id_logits: np.ndarray, T: float, *, backend: str, progress: bool
) -> dict[str, Any]:
    if not path.is_dir():
        raise HeadstartError(f"--ood {path} is not a folder", fix="give a folder of files (any layout)")
    files = _visible_files(path)
    if not files:
        raise HeadstartError(f"--ood {path} has no files", fix="give a folder of out-of-distribution files")
    z, kept, bad = model.logits([str(f) for f in files], backend=backend, progress=progress)
    out: dict[str, Any] = {"path": str(path), "n": len(kept), "n_skipped": len(bad)}
    # A file inside a folder named like a known class is labeled with it; anything else is unlabeled.
    t, known = _targets([files[i].parent.name for i in kept], model.classes)
    if known.any():
        out["n_labeled"] = int(known.sum())
        out["accuracy"] = float((z[known].argmax(1) == t[known]).mean())
    out["auroc_msp"] = auroc(softmax(id_logits / T).max(1), softmax(z / T).max(1)) if len(z) else None
    out["auroc_energy"] = auroc(energy_score(id_logits), energy_score(z)) if len(z) else None
    return out


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
) -> dict[str, Any]:
    """Evaluate a run folder. On its own split (`data=None`) write calibration.json and evaluation.json
    into it (unless save=False); on other data write nothing into it. `out`: also write the result there.
    """
    from headstart.model import CALIBRATION_FILE, load_model

    run_dir = Path(run_dir)
    own_split = data is None
    writes_run = save and own_split  # other data never overwrites what describes the run's own split
    if writes_run and (run_dir / "manifest.json").is_file() and (run_dir / "card.json").is_file():
        raise HeadstartError(
            f"{run_dir} is a stored model version, which is never modified",
            fix="evaluate the run folder before registering it, or pass save=False",
        )
    out_path = _check_out(out, run_dir, own_split) if out is not None else None
    t_start = time.perf_counter()
    model = load_model(run_dir)
    classes = model.classes
    if data is None:
        sources, labels = _run_rows(run_dir, split, model.modality)
        described = f"{run_dir}/split.csv ({split} split)"
        if not sources:
            raise HeadstartError(
                f"{run_dir} has no {split!r} rows in split.csv", fix="choose another --split, or give DATA"
            )
    else:
        sources, labels, described = data_items(data, split, model.modality)
    t, known = _targets(labels, classes)
    unknown_labels = sorted({labels[i] for i in np.flatnonzero(~known)})
    usable = np.flatnonzero(known)
    z, kept, bad = model.logits([sources[i] for i in usable], backend=backend, progress=progress)
    if len(kept) == 0:
        listed = "; ".join(f"{p}: {r}" for p, r in list(bad.items())[:3])
        raise HeadstartError(
            f"none of the {len(sources)} items of {described} could be read ({listed})",
            fix="run from the folder `probe` ran in (split.csv paths are relative to it), or give DATA",
        )
    idx = usable[kept]
    y = t[idx]
    pred = z.argmax(axis=1)
    metrics = classification_metrics(y, pred, classes)

    cal = _calibrate(model, run_dir, backend=backend, progress=progress) if own_split else None
    new_calibration = cal  # written with evaluation.json at the end, so a failure later changes neither
    if cal is None:  # other data, or no val rows: the run's calibration.json as it stands
        cal = {**_recorded_calibration(run_dir), "fitted_on": None, "n": 0}
        cal["source"] = f"{run_dir / CALIBRATION_FILE} (not refitted)"
    T = float(cal["temperature"])
    p_before, p_after = softmax(z), softmax(z / T)
    conf = p_after.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:N_MISTAKES]
    result: dict[str, Any] = {
        "run": str(run_dir),
        "data": described,
        "split": split,
        "n": len(y),
        "classes": classes,
        "skipped": bad,
        "unknown_labels": {"labels": unknown_labels, "n": int((~known).sum())},
        "metrics": metrics,
        "calibration": {
            "ece_before": ece(p_before, y),
            "ece_after": ece(p_after, y),
            "temperature": T,
            "applied_temperature": T,
            "fitted_temperature": cal.get("fitted_temperature"),
            "status": cal["status"],
            "reason": cal["reason"],
            "fitted_on": cal.get("fitted_on"),
            "n_fit": cal.get("n", 0),
            "source": cal.get("source", f"fitted now on {run_dir}/split.csv val rows"),
            "reliability_before": reliability(p_before, y),
            "reliability_after": reliability(p_after, y),
        },
        "ood": (
            _ood(model, Path(ood), z, T, backend=backend, progress=progress) if ood is not None else None
        ),
        "latency": measure_latency(model, sources[idx[0]], backend=backend) if latency else None,
        "memory": {},
        "mistakes": [
            {
                "source": sources[idx[i]],
                "label": classes[y[i]],
                "pred": classes[pred[i]],
                "confidence": float(conf[i]),
            }
            for i in wrong
        ],
        "seconds": 0.0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
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
    from headstart.model import CALIBRATION_FILE

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
