"""Reading and writing a run folder: `write_run` writes a whole run in one rename; `load_run` reads it
back, checking every recorded sha256; `load_run_info` reads run.json alone (any schema version) and
`read_split_rows` split.csv; `read_json`, `read_calibration` and `read_evaluation` the records other verbs
add. The file names are in `headstart.runs.names`, the records in `headstart.runs.records`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.errors import HeadstartError
from headstart.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    sha256_file,
)
from headstart.runs.names import (
    CALIBRATION_FILE,
    DATA_FILE,
    EVALUATION_FILE,
    HEAD_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    RUN_FILE,
    SPLIT_COLUMNS,
    SPLIT_FILE,
)
from headstart.runs.records import Calibration, Evaluation, FileRef, RunInfo, SplitRow

if TYPE_CHECKING:  # head.py imports torch; the run folder's names and readers stay light (the store's too)
    from headstart.head import LinearHead


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
    import numpy as np
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


def read_split_rows(
    run_dir: str | Path, *, fix: str = "give the folder `probe` or `fit` wrote"
) -> list[SplitRow]:
    """The rows of a run's split.csv (`SplitRow`, paths as recorded: `headstart.runs.items` resolves them):
    the one reader of that file.

    No split.csv: an error whose `fix` says what the caller can do instead. A split.csv that is not UTF-8
    CSV with path,label,split on every row: an error naming the file and line (the folder is damaged)."""
    f = Path(run_dir) / SPLIT_FILE
    if not f.is_file():
        raise HeadstartError(f"{run_dir} has no {SPLIT_FILE}, so its own splits are unknown", fix=fix)
    damaged = f"the run folder is damaged: restore {SPLIT_FILE}, or re-run"
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
                path, label, split = (r.get(c) for c in SPLIT_COLUMNS[:3])
                if path is None or label is None or split is None:
                    raise HeadstartError(f"{f}:{reader.line_num} has too few fields", fix=damaged)
                rows.append(SplitRow(path, label, split, r.get("sha256") or "", r.get("group") or ""))
    except (UnicodeDecodeError, csv.Error) as e:
        raise HeadstartError(f"{f} is not UTF-8 CSV ({e})", fix=damaged) from e
    return rows


def split_csv(rows: Sequence[SplitRow]) -> str:
    """split.csv's text: the header (`SPLIT_COLUMNS`), then one line per row. The `group` column is written
    only when an item has a slice, so a run without slices writes the file older readers know."""
    cols = SPLIT_COLUMNS if any(r.group for r in rows) else SPLIT_COLUMNS[:4]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(r.as_csv()[: len(cols)] for r in rows)
    return buf.getvalue()


def check_base(info: RunInfo, backbone: Any, run_dir: str | Path) -> None:
    """The base weights a run was trained on must be the ones loaded, or its head reads other features.

    Compares run.json's recorded weights sha256 (then the backbone key: weights + preprocessing) with the
    backbone actually built; a from-scratch run (pretrained false) references no base weights.
    """
    if not info.pretrained:
        return
    ref = info.backbone
    run_file = Path(run_dir) / RUN_FILE
    recorded, actual = ref.weights_sha256, backbone.card.weights_sha256
    if recorded != actual:
        raise HeadstartError(
            f"the base weights of {ref.name} loaded here are not the ones {run_file} records: "
            f"recorded sha256 {recorded or 'none (random init)'}, "
            f"loaded sha256 {actual or 'none (random init, no weights file)'}",
            fix="install the exact base weights recorded in run.json; if run.json was edited, restore it "
            "(or re-run)",
        )
    if backbone.key != ref.key:
        raise HeadstartError(
            f"the base backbone {ref.name} loaded here is not the one {run_file} records "
            f"(same weights sha256 {actual or 'none'}, but other preprocessing or name): "
            f"recorded key {ref.key}, loaded key {backbone.key}",
            fix="use the headstart version and backbone files the run was made with; if run.json was "
            "edited, restore it (or re-run)",
        )


def write_run(
    out: str | Path,
    *,
    run: RunInfo | dict[str, Any],
    head: LinearHead | None,
    metrics: dict[str, Any],
    data: dict[str, Any] | None = None,
    split_rows: Sequence[SplitRow] | None = None,
    tensors: dict[str, dict[str, Any]] | None = None,
    json_files: dict[str, Any] | None = None,
    text_files: dict[str, str] | None = None,
    checked: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write the whole run into a temp folder beside `out`, then move it into place in one rename.

    run.json is written at the current schema version, with the head's and every tensor file's sha256
    (and of the `json_files` named in `checked`: a shape's read-out state, which load_run then checks and
    the store keeps), and the data root's place relative to the run (so the pair can move together)."""
    out = ensure_writable_dir(out, flag="--out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HeadstartError(
            f"{out} already exists and is not empty", fix="choose another --out, or --overwrite"
        )
    info = RunInfo.from_dict(run) if isinstance(run, dict) else run
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if head is not None:  # a generative run (headstart.shapes.generate) has no head
            save_head(tmp / HEAD_FILE, head, info.classes)
        recorded: dict[str, str] = {}
        for name, state in (tensors or {}).items():
            save_tensors(tmp / name, state)
            recorded[name] = sha256_file(tmp / name)
        for name in checked:
            atomic_write_json(tmp / name, (json_files or {})[name])
            recorded[name] = sha256_file(tmp / name)
        head_ref = FileRef(HEAD_FILE, sha256_file(tmp / HEAD_FILE)) if head is not None else None
        info = replace(info, head=head_ref, files=recorded)
        if info.data_root is not None:
            info.data_root_from_run = Path(os.path.relpath(info.data_root, os.path.abspath(out))).as_posix()
        for name, obj in (json_files or {}).items():
            if name not in checked:
                atomic_write_json(tmp / name, obj)
        for name, text in (text_files or {}).items():
            atomic_write_text(tmp / name, text)
        atomic_write_json(tmp / RUN_FILE, to_jsonable(info.to_dict()))
        atomic_write_json(tmp / METRICS_FILE, metrics)
        if data is not None:
            atomic_write_json(tmp / DATA_FILE, data)
        if split_rows is not None:
            atomic_write_text(tmp / SPLIT_FILE, split_csv(split_rows))
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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing or unreadable (a card lists what it can)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """run.json as written (the JSON object): an error naming the folder when it is no run, or damaged."""
    path = Path(run_dir)
    run_file = path / RUN_FILE
    if not run_file.is_file():
        raise HeadstartError(
            f"{path} is not a headstart run folder (no {RUN_FILE})",
            fix="give the folder that `headstart probe` or `headstart fit` printed",
        )
    try:
        raw = json.loads(run_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadstartError(f"{run_file} is not valid JSON: {e}", fix="the run folder is damaged") from e
    if not isinstance(raw, dict):
        raise HeadstartError(f"{run_file} is not a JSON object", fix="the run folder is damaged")
    return raw


def run_info_of(run_dir: str | Path, raw: dict[str, Any]) -> RunInfo:
    """RunInfo of run.json's object; for a version-1 run, what it kept elsewhere: the strategy in
    recipe.json, the modality in data.json."""
    path = Path(run_dir)
    info = RunInfo.from_dict(raw, source=path / RUN_FILE)
    if info.strategy is None:
        recipe = read_json(path / RECIPE_FILE)
        info.strategy = recipe.get("strategy") or recipe.get("name") or None
    if info.modality is None:
        info.modality = read_json(path / DATA_FILE).get("modality") or None
    return info


def load_run_info(run_dir: str | Path) -> RunInfo:
    """run.json of `run_dir` as a RunInfo (any schema version); no weights are read or checked."""
    return run_info_of(run_dir, read_run_json(run_dir))


def read_calibration(run_dir: str | Path) -> Calibration | None:
    """The run's calibration.json (None without one); unreadable JSON is an error that says what to do."""
    f = Path(run_dir) / CALIBRATION_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise HeadstartError(
            f"{f} is not readable JSON ({e})",
            fix="delete it (predictions then use T = 1), then `headstart evaluate RUN` refits it",
        ) from e
    return Calibration.from_dict(record)


def read_evaluation(run_dir: str | Path) -> Evaluation | None:
    """The run's evaluation.json (None without a readable one)."""
    record = read_json(Path(run_dir) / EVALUATION_FILE)
    return Evaluation.from_dict(record) if record else None


@dataclass
class Run:
    """A run folder as read: `info` its RunInfo, `raw` run.json as written (its JSON object)."""

    path: Path
    info: RunInfo
    raw: dict[str, Any]
    head: LinearHead
    metrics: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)


def _check_file(path: Path, sha: str) -> None:
    if not path.is_file():
        raise HeadstartError(f"{path} is missing", fix="the run folder is incomplete; re-run it")
    if sha256_file(path) != sha:
        raise HeadstartError(
            f"{path} does not match its recorded sha256 (changed or truncated)",
            fix="restore the file or re-run",
        )


def check_stored_files(path: Path, info: RunInfo) -> None:
    """The head (if any) and every file run.json lists are there with their recorded sha256."""
    if info.head is not None:
        _check_file(path / info.head.file, info.head.sha256)
    for name, sha in info.files.items():
        _check_file(path / name, sha)


def load_run(path: str | Path) -> Run:
    """Read a run folder, checking that the head and every stored file are the ones the run recorded."""
    path = Path(path)
    raw = read_run_json(path)
    info = run_info_of(path, raw)
    if info.head is None or not info.classes:
        raise HeadstartError(
            f"{path / RUN_FILE} records no head file or no classes",
            fix="the run folder is damaged; re-run it",
        )
    head_path = path / info.head.file
    check_stored_files(path, info)
    metrics = read_json(path / METRICS_FILE)
    head = load_head(head_path)
    if head.weight.shape[0] != len(info.classes):
        raise HeadstartError(
            f"{head_path} has {head.weight.shape[0]} outputs for {len(info.classes)} classes"
        )
    return Run(path=path, info=info, raw=raw, head=head, metrics=metrics)


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    np = sys.modules.get("numpy")  # a numpy scalar exists only once numpy is loaded (this module stays light)
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    return obj
