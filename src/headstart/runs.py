"""A run directory: everything one experiment produced, written atomically as a whole.

This module owns the run folder's layout: every file name below is a constant here, and every verb names
the files through them (and reads split.csv through `read_split_rows`).

run.json          RUN_FILE: what was run: kind, backbone reference (name + weights sha256 + card),
                  preprocessing, classes, hyper-parameters, library versions
head.safetensors  HEAD_FILE: the trained linear head (logits = x @ weight.T + bias on pooled embeddings)
*.safetensors     other trained tensors listed in run.json "files" with their sha256 (for fine-tuning:
                  DELTA_FILE = only the trained layer groups, the base referenced by hash; ADAPTER_FILE)
metrics.json      METRICS_FILE: val/test metrics, timings, parameter counts
data.json         DATA_FILE: data summary: layout, class counts per split, skipped files with reasons
split.csv         SPLIT_FILE: path,label,split,sha256 of every item used (a text run: the texts themselves)
history.json/.csv HISTORY_FILE, HISTORY_CSV_FILE: per-epoch curves of a fit; recipe.json RECIPE_FILE
Written later into the folder: calibration.json (CALIBRATION_FILE) and evaluation.json (EVALUATION_FILE)
by evaluate; compare.json, leakage.json, curve.json (COMPARE_FILE, LEAKAGE_FILE, CURVE_FILE) and
report.html (REPORT_FILE) by auto; distill.json (DISTILL_FILE) by distill; model.onnx (ONNX_FILE) by export.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.errors import HeadstartError
from headstart.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    sha256_file,
)

if TYPE_CHECKING:  # head.py imports torch; the run folder's names and readers stay light (the store's too)
    from headstart.head import LinearHead

RUN_FILE = "run.json"
HEAD_FILE = "head.safetensors"
DELTA_FILE = "delta.safetensors"
ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.json"
DATA_FILE = "data.json"
SPLIT_FILE = "split.csv"
HISTORY_FILE = "history.json"
HISTORY_CSV_FILE = "history.csv"
RECIPE_FILE = "recipe.json"
CALIBRATION_FILE = "calibration.json"
EVALUATION_FILE = "evaluation.json"
COMPARE_FILE = "compare.json"
LEAKAGE_FILE = "leakage.json"
CURVE_FILE = "curve.json"
REPORT_FILE = "report.html"
DISTILL_FILE = "distill.json"
ONNX_FILE = "model.onnx"
#: split.csv's columns; a reader needs the first three (runs before content hashes have no sha256).
SPLIT_COLUMNS = ("path", "label", "split", "sha256")


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("headstart", "torch", "numpy", "onnxruntime", "transformers", "pillow"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def default_run_dir(kind: str, backbone: str, root: str | Path = "runs") -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in backbone)[-40:]
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{safe}"


def save_head(path: Path, head: LinearHead, classes: list[str]) -> None:
    from safetensors.numpy import save

    data = save({"weight": head.weight, "bias": head.bias}, metadata={"classes": json.dumps(classes)})
    atomic_write_bytes(path, data)


def load_head(path: Path) -> LinearHead:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from headstart.head import LinearHead

    try:
        t = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise HeadstartError(f"cannot read head weights {path}: {e}", fix="the run folder is damaged") from e
    return LinearHead(weight=t["weight"], bias=t["bias"])


def save_tensors(path: Path, state: dict[str, Any]) -> None:
    """torch or numpy tensors -> one safetensors file, atomically."""
    import torch
    from safetensors.torch import save

    tensors = {
        k: (
            v.detach().cpu().contiguous()
            if isinstance(v, torch.Tensor)
            else torch.from_numpy(np.ascontiguousarray(v))
        )
        for k, v in state.items()
    }
    atomic_write_bytes(path, save(tensors))


def load_tensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise HeadstartError(f"cannot read weights {path}: {e}", fix="the run folder is damaged") from e


def make_split_rows(items: Any, hashes: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """split.csv rows (path, label, split, sha256) of dataset items; `hashes`: source -> content hash
    (the backbone's item_hash, the key the feature cache and the changed-file checks use)."""
    return [(it.source, it.label, it.split or "", hashes.get(it.source, "")) for it in items]


def read_split_rows(
    run_dir: str | Path, *, fix: str = "give the folder `probe` or `fit` wrote"
) -> list[dict[str, str]]:
    """The rows of a run's split.csv as dicts (`SPLIT_COLUMNS`): the one reader of that file.

    No split.csv: an error whose `fix` says what the caller can do instead. A split.csv that is not UTF-8
    CSV with path,label,split on every row: an error naming the file and line (the folder is damaged)."""
    f = Path(run_dir) / SPLIT_FILE
    if not f.is_file():
        raise HeadstartError(f"{run_dir} has no {SPLIT_FILE}, so its own splits are unknown", fix=fix)
    damaged = "the run folder is damaged: restore split.csv, or re-run"
    try:
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in SPLIT_COLUMNS[:3] if c not in (reader.fieldnames or [])]
            if missing:
                raise HeadstartError(
                    f"{f} lacks column(s) {missing} (has {reader.fieldnames or 'none'})", fix=damaged
                )
            rows = []
            for r in reader:
                if any(r.get(c) is None for c in SPLIT_COLUMNS[:3]):
                    raise HeadstartError(f"{f}:{reader.line_num} has too few fields", fix=damaged)
                rows.append(r)
    except (UnicodeDecodeError, csv.Error) as e:
        raise HeadstartError(f"{f} is not UTF-8 CSV ({e})", fix=damaged) from e
    return rows


def split_texts(run_dir: str | Path, modality: str) -> dict[str, str]:
    """A text run's split.csv row ids mapped back to the texts (older runs list `<file>:<row>`, not the
    text; newer ones list the texts themselves, so the map is empty or unused); {} for file modalities
    or when the run's data can no longer be read."""
    if modality != "text":
        return {}
    from headstart.data import load_dataset

    try:
        summary = json.loads((Path(run_dir) / DATA_FILE).read_text())
        ds = load_dataset(summary["root"], modality=modality, seed=int(summary.get("seed", 0)))
    except (OSError, KeyError, ValueError, HeadstartError):
        return {}
    return {str(it.path): it.source for it in ds.items}


def check_base(info: dict[str, Any], backbone: Any, run_dir: str | Path) -> None:
    """The base weights a run was trained on must be the ones loaded, or its head reads other features.

    Compares run.json's recorded weights sha256 (then the backbone key: weights + preprocessing) with the
    backbone actually built; a from-scratch run (pretrained false) references no base weights.
    """
    if not info.get("pretrained", True):
        return
    ref = info.get("backbone", {})
    run_file = Path(run_dir) / RUN_FILE
    recorded, actual = ref.get("weights_sha256"), backbone.card.weights_sha256
    if recorded != actual:
        raise HeadstartError(
            f"the base weights of {ref.get('name')} loaded here are not the ones {run_file} records: "
            f"recorded sha256 {recorded or 'none (random init)'}, "
            f"loaded sha256 {actual or 'none (random init, no weights file)'}",
            fix="install the exact base weights recorded in run.json; if run.json was edited, restore it "
            "(or re-run)",
        )
    if backbone.key != ref.get("key"):
        raise HeadstartError(
            f"the base backbone {ref.get('name')} loaded here is not the one {run_file} records "
            f"(same weights sha256 {actual or 'none'}, but other preprocessing or name): "
            f"recorded key {ref.get('key')}, loaded key {backbone.key}",
            fix="use the headstart version and backbone files the run was made with; if run.json was "
            "edited, restore it (or re-run)",
        )


def write_run(
    out: str | Path,
    *,
    run: dict[str, Any],
    head: LinearHead,
    metrics: dict[str, Any],
    data: dict[str, Any] | None = None,
    split_rows: list[tuple[str, str, str, str]] | None = None,
    tensors: dict[str, dict[str, Any]] | None = None,
    json_files: dict[str, Any] | None = None,
    text_files: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the whole run into a temp folder beside `out`, then move it into place in one rename."""
    out = ensure_writable_dir(out, flag="--out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HeadstartError(
            f"{out} already exists and is not empty", fix="choose another --out, or --overwrite"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_head(tmp / HEAD_FILE, head, run["classes"])
        run = {**run, "head": {"file": HEAD_FILE, "sha256": sha256_file(tmp / HEAD_FILE)}}
        recorded: dict[str, str] = {}
        for name, state in (tensors or {}).items():
            save_tensors(tmp / name, state)
            recorded[name] = sha256_file(tmp / name)
        if recorded:
            run["files"] = recorded
        for name, obj in (json_files or {}).items():
            atomic_write_json(tmp / name, obj)
        for name, text in (text_files or {}).items():
            atomic_write_text(tmp / name, text)
        atomic_write_json(tmp / RUN_FILE, run)
        atomic_write_json(tmp / METRICS_FILE, metrics)
        if data is not None:
            atomic_write_json(tmp / DATA_FILE, data)
        if split_rows is not None:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(SPLIT_COLUMNS)
            w.writerows(split_rows)
            atomic_write_text(tmp / SPLIT_FILE, buf.getvalue())
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Run:
    path: Path
    info: dict[str, Any]
    head: LinearHead
    metrics: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])


def load_run(path: str | Path) -> Run:
    """Read a run folder, checking that the head file is the one the run recorded."""
    path = Path(path)
    run_file = path / RUN_FILE
    if not run_file.is_file():
        raise HeadstartError(
            f"{path} is not a headstart run (no {RUN_FILE})", fix="give the folder `probe` printed"
        )
    try:
        info = json.loads(run_file.read_text())
    except json.JSONDecodeError as e:
        raise HeadstartError(f"{run_file} is not valid JSON: {e}", fix="the run folder is damaged") from e
    head_path = path / info["head"]["file"]
    if not head_path.is_file():
        raise HeadstartError(f"{head_path} is missing", fix="the run folder is incomplete; re-run it")
    got = sha256_file(head_path)
    if got != info["head"]["sha256"]:
        raise HeadstartError(
            f"{head_path} does not match its recorded sha256 (changed or truncated)",
            fix="restore the file or re-run",
        )
    for name, sha in info.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise HeadstartError(f"{f} is missing", fix="the run folder is incomplete; re-run it")
        if sha256_file(f) != sha:
            raise HeadstartError(
                f"{f} does not match its recorded sha256 (changed or truncated)",
                fix="restore the file or re-run",
            )
    metrics_path = path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    head = load_head(head_path)
    if head.weight.shape[0] != len(info["classes"]):
        raise HeadstartError(
            f"{head_path} has {head.weight.shape[0]} outputs for {len(info['classes'])} classes"
        )
    return Run(path=path, info=info, head=head, metrics=metrics)


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
