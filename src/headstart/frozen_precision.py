"""The frozen forward's precision: fp32 or int8, and what `auto` picks, proven on the data at hand.

One vocabulary with the engine's `--precision` (headstart.train.engine.PRECISIONS): frozen forwards take
`fp32`, `int8` or `auto`. `auto` picks int8 only
1. on a CPU through ONNX Runtime (on a GPU the engine's choice stands: fp32), where
2. a short timed forward of this backbone on this machine and thread count says int8 is faster (by
   INT8_MARGIN; remembered in the cache's frozen_forward_times.json, like the training step-time memo), and
3. the accuracy gate holds: the probe's repeated k-fold score over train+val on int8 features is not worse
   than on float features beyond noise (the verdicts' rule: exact McNemar on the items, 5 %; each item
   counts as right when right in most repeats), with Wilson intervals on both scores.
`int8` forces it and still reports the comparison. A run records what was chosen and why, with the int8
model's identity (headstart.quantize_forward), and `run_forward` rebuilds that very forward for every later
use of the run (predict, evaluate, serve) or refuses.

This module stays cheap to import (the CLI's parsers read FROZEN_PRECISIONS).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    import numpy as np

    from headstart.backbones.base import Backbone
    from headstart.data import Dataset
    from headstart.features import Features
    from headstart.quantize_forward import Int8Forward
    from headstart.runs import RunInfo

FROZEN_PRECISIONS = ("auto", "fp32", "int8")
FROZEN_PRECISION_HELP = (
    "precision of the frozen forward: fp32, int8 (ONNX Runtime, quantized to fit the network, calibrated "
    "on training items), or auto: int8 on a CPU only where it is faster here and loses no accuracy beyond "
    "noise on this data"
)
#: int8 counts as faster when it takes at most this fraction of the float forward's time (timing noise).
INT8_MARGIN = 0.9
TIMED_ITEMS = 16
RECORD_KEY = "frozen_forward"  # in run.json and metrics.json


def check_frozen_precision(precision: str, backend: str = "auto") -> str:
    """The value, and that the backend can run it (int8 is ONNX Runtime's), before any work."""
    if precision not in FROZEN_PRECISIONS:
        raise HeadstartError(
            f"precision {precision!r} is not a frozen-forward precision",
            fix=f"give one of {FROZEN_PRECISIONS}",
        )
    if precision == "int8" and backend == "torch":
        raise HeadstartError(
            "--precision int8 with --backend torch: the int8 frozen forward runs through ONNX Runtime",
            fix="use --backend auto (or onnx) with --precision int8, or --precision fp32 with torch",
        )
    return precision


def int8_speed(backbone: Backbone, int8: Int8Forward, *, cache: bool = True) -> dict[str, Any]:
    """{"fp32_s", "int8_s", "faster"} for a batch of TIMED_ITEMS items through both ONNX Runtime forwards
    (the faster of 3 timed runs each, after a warm-up), remembered per backbone, method, machine and
    thread count."""
    import torch

    from headstart.features import forward_seconds
    from headstart.onnx_forward import OnnxForward
    from headstart.train.precision import machine_key, remembered, timed_input

    def measure() -> dict[str, Any]:
        x = timed_input(backbone, TIMED_ITEMS)
        fp32_s, int8_s = forward_seconds(OnnxForward(backbone), x), forward_seconds(int8, x)
        faster = int8_s <= INT8_MARGIN * fp32_s
        return {
            "fp32_s": fp32_s,
            "int8_s": int8_s,
            "faster": faster,
            "items": TIMED_ITEMS,
            "threads": torch.get_num_threads(),
        }

    key = f"{backbone.key}|{int8.identity.method}|{TIMED_ITEMS} items|{machine_key()}"
    out, known = remembered("frozen_forward_times.json", key, measure, use=cache)
    return {**out, "remembered": known}


def accuracy_gate(
    X_fp32: np.ndarray, X_int8: np.ndarray, y: np.ndarray, n_classes: int, *, C: float, seed: int = 0
) -> dict[str, Any]:
    """The probe's repeated k-fold accuracy on both feature sets (the same folds), each with its Wilson
    interval, and the paired test; `holds`: int8 is not worse beyond noise."""
    import numpy as np

    from headstart.intervals import paired_difference, paired_verdict, wilson
    from headstart.verdicts.cheap_cv import CV_FOLDS, CV_REPEATS, cv_hits, n_cv_folds

    n_folds = n_cv_folds(y, n_classes, CV_FOLDS)
    if n_folds < 2:
        return {"holds": False, "reason": "a class has fewer than 2 labeled items: nothing to cross-validate"}
    hits: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
    for r in range(CV_REPEATS):
        for name, X in (("fp32", X_fp32), ("int8", X_int8)):
            hits[name].append(
                cv_hits(X, y, n_classes, C=C, n_folds=n_folds, seed=seed + r, knn=False)["probe"]
            )
    n = len(y)
    out: dict[str, Any] = {"scheme": f"{CV_REPEATS}x{n_folds}-fold probe over train+val ({n} items)", "C": C}
    for name, runs in hits.items():
        mean = float(np.mean([h.sum() for h in runs]))
        out[name] = {"accuracy": mean / n, "accuracy_ci": list(wilson(round(mean), n))}
    # One paired outcome per item: right in most repeats.
    paired = paired_difference(np.mean(hits["int8"], 0) > 0.5, np.mean(hits["fp32"], 0) > 0.5)
    out["int8_minus_fp32"] = paired
    out["holds"] = paired_verdict(paired) != "worse"
    return out


def _gate_on(feats: dict[str, Features], ds: Dataset, C: float | None, seed: int) -> dict[str, Any]:
    """The gate over the train+val items both feature sets have (test stays unseen)."""
    import numpy as np

    from headstart.head import fit_head

    rows = {k: {p: i for i, p in enumerate(f.paths)} for k, f in feats.items()}
    index = {c: i for i, c in enumerate(ds.classes)}
    items = [
        it for it in ds.items if it.split in ("train", "val") and all(it.source in r for r in rows.values())
    ]
    X = {k: feats[k].X[[rows[k][it.source] for it in items]] for k in feats}
    y = np.array([index[it.label] for it in items], dtype=np.int64)
    if C is None:  # the probe's own choice on the float features: its L2 strength chosen on val
        is_val = np.array([it.split == "val" for it in items])
        tr, va = ~is_val, is_val
        has_val = bool(va.any())
        _, C, _ = fit_head(
            X["fp32"][tr],
            y[tr],
            len(ds.classes),
            X_val=X["fp32"][va] if has_val else None,
            y_val=y[va] if has_val else None,
            seed=seed,
        )
    return accuracy_gate(X["fp32"], X["int8"], y, len(ds.classes), C=float(C), seed=seed)


def frozen_features(
    backbone: Backbone, ds: Dataset, precision: str, *, C: float | None = None, seed: int = 0, **embed_kw: Any
) -> tuple[Features, dict[str, Any]]:
    """Every item of `ds` embedded at the precision asked (`auto`: see the module docstring), and the
    record of the choice (run.json's `frozen_forward`): {"precision", "reason", "speed", "gate", "int8"}.
    `embed_kw`: headstart.features.embed's options (backend, device, cache, ...)."""
    from headstart.features import embed, forward_device
    from headstart.quantize_forward import Int8Forward

    backend, device = embed_kw.get("backend", "auto"), embed_kw.get("device", "auto")
    check_frozen_precision(precision, backend)
    sources = [it.source for it in ds.items]
    if precision == "fp32":
        return embed(backbone, sources, **embed_kw), {"precision": "fp32", "reason": "asked (fp32)"}
    if precision == "auto" and (
        backend == "torch" or not backbone.supports_onnx or forward_device(backend, device).type != "cpu"
    ):
        why = "auto: int8 runs through ONNX Runtime on a CPU; this forward does not, so fp32 stands"
        return embed(backbone, sources, **embed_kw), {"precision": "fp32", "reason": why}
    if not backbone.supports_onnx:
        raise HeadstartError(
            f"{backbone.name} has no ONNX Runtime path, which the int8 forward needs",
            fix="use --precision fp32 (or auto)",
        )
    int8 = Int8Forward(backbone, [it.source for it in ds.split("train")])  # calibration: training split only
    speed = int8_speed(backbone, int8, cache=embed_kw.get("cache", True) is not False)
    record: dict[str, Any] = {"speed": speed}
    if precision == "auto" and not speed["faster"]:
        record.update(
            precision="fp32",
            reason=f"auto: int8 is not faster here ({speed['int8_s'] * 1e3:.1f} vs "
            f"{speed['fp32_s'] * 1e3:.1f} ms per {speed['items']} items)",
        )
        return embed(backbone, sources, **embed_kw), record
    feats = {
        "fp32": embed(backbone, sources, **embed_kw),
        "int8": embed(backbone, sources, int8=int8, **embed_kw),
    }
    gate = _gate_on(feats, ds, C, seed)
    record["gate"] = gate
    chosen = "int8" if precision == "int8" or gate["holds"] else "fp32"
    if precision == "int8":
        reason = "asked (int8)" + ("" if gate["holds"] else "; it loses accuracy beyond noise (see gate)")
    elif chosen == "int8":
        reason = "auto: int8 is faster here and loses no accuracy beyond noise"
    else:
        reason = "auto: int8 is faster here but loses accuracy beyond noise, so fp32"
    record.update(precision=chosen, reason=reason)
    if chosen == "int8":
        record["int8"] = int8.record()
    return feats[chosen], record


def recorded_precision(info: RunInfo, source: str) -> dict[str, Any] | None:
    """A run's frozen-forward record (None: fp32, as every run before int8 existed); a damaged one is an
    error, never read as fp32."""
    rec = info.extra.get(RECORD_KEY)
    if rec is None:
        return None
    if not isinstance(rec, dict) or rec.get("precision") not in ("fp32", "int8"):
        raise HeadstartError(
            f"{source} has an unreadable {RECORD_KEY} record ({str(rec)[:80]})",
            fix="the run folder is damaged: restore run.json, or re-run it",
        )
    if rec["precision"] == "int8" and not isinstance(rec.get("int8"), dict):
        raise HeadstartError(
            f"{source} records an int8 frozen forward without its model",
            fix="the run folder is damaged: restore run.json, or re-run it",
        )
    return rec


def run_forward(run_dir: Path | None, info: RunInfo, backbone: Backbone) -> Int8Forward | None:
    """The int8 forward a run's head was trained on (None: fp32), rebuilt exactly: from the cache, else
    quantized again from the float export and the recorded calibration items (the run's training split,
    found by sha256); refused when it cannot be, or when the result's sha256 differs from the record."""
    from headstart.fileio import sha256_file_memo
    from headstart.quantize_forward import Int8Forward, Int8Identity

    source = str(run_dir / "run.json") if run_dir is not None else "run.json"
    rec = recorded_precision(info, source)
    if rec is None or rec["precision"] == "fp32":
        return None
    expected = Int8Identity.from_dict(rec["int8"], source)
    forward = Int8Forward(backbone, expected=expected)
    if not forward.path.is_file() and expected.calibration:
        forward = Int8Forward(
            backbone, _calibration_sources(run_dir, info, set(expected.calibration)), expected=expected
        )
    got = sha256_file_memo(forward.ensure())
    if got != rec["int8"].get("sha256"):
        raise HeadstartError(
            f"the int8 {backbone.name} rebuilt here (sha256 {got[:12]}) is not the one {source} was "
            f"trained on (sha256 {str(rec['int8'].get('sha256'))[:12]}): the onnxruntime version "
            "probably differs",
            fix="use the library versions recorded in run.json, or re-run the probe here",
        )
    return forward


def _calibration_sources(run_dir: Path | None, info: RunInfo, hashes: set[str]) -> list[str]:
    """The run's training items whose recorded sha256 is a calibration item's (files found unchanged)."""
    if run_dir is None:
        return []
    from headstart.runs import read_split_rows, resolve_item

    out = []
    for row in read_split_rows(run_dir):
        if row.split != "train" or row.sha256 not in hashes:
            continue
        if info.modality == "text":
            out.append(row.path)  # a text run's split.csv holds the texts
        else:
            found = resolve_item(run_dir, row, info, verify=True)
            if found is not None:
                out.append(str(found))
    return out
