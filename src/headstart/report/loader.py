"""Reading a run folder for the report: its JSON files, and the facts several sections share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.report.html import num
from headstart.runs import (
    CALIBRATION_FILE,
    CLUSTERS_FILE,
    COMPARE_FILE,
    CURVE_FILE,
    DATA_FILE,
    EVALUATION_FILE,
    HISTORY_FILE,
    LEAKAGE_FILE,
    METRICS_FILE,
    OVERLAP_FILE,
    RECIPE_FILE,
    RunInfo,
    read_run_json,
    resolve_path,
    run_info_of,
)


@dataclass
class RunFiles:
    """The JSON files of one run folder that the report reads (None where absent); `problems` for the rest.
    `info` is run.json as a RunInfo (read its attributes); `run` the JSON object as written."""

    path: Path
    run: dict[str, Any]
    info: RunInfo
    data: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    curve: dict[str, Any] | None = None
    leakage: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    clusters: dict[str, Any] | None = None
    overlap: dict[str, Any] | None = None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)


def read_run_files(run_dir: str | Path) -> RunFiles:
    path = Path(run_dir)
    run = read_run_json(path)
    files = RunFiles(path=path, run=run, info=run_info_of(path, run))
    for attr, name in (
        ("data", DATA_FILE),
        ("metrics", METRICS_FILE),
        ("evaluation", EVALUATION_FILE),
        ("history", HISTORY_FILE),
        ("compare", COMPARE_FILE),
        ("curve", CURVE_FILE),
        ("leakage", LEAKAGE_FILE),
        ("recipe", RECIPE_FILE),
        ("calibration", CALIBRATION_FILE),
        ("clusters", CLUSTERS_FILE),
        ("overlap", OVERLAP_FILE),
    ):
        f = path / name
        if not f.is_file():
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            files.problems[name] = f"not readable JSON ({e})"
            continue
        if isinstance(obj, dict):
            setattr(files, attr, obj)
        else:
            files.problems[name] = f"expected a JSON object, found {type(obj).__name__}"
    return files


def eval_cmd(files: RunFiles) -> str:
    return f"headstart evaluate {files.path}"


def test_metrics(files: RunFiles) -> tuple[dict[str, Any] | None, str, str]:
    """Held-out metrics to show, their split, and where they come from: evaluation.json, else metrics.json."""
    ev = files.evaluation or {}
    if isinstance(ev.get("metrics"), dict):
        split = str(ev.get("split", "test"))
        where = str(ev.get("data") or f"{split} split")
        return ev["metrics"], split, f"{where}, n = {num(ev.get('n'))} (evaluation.json)"
    m = files.metrics or {}
    for split in ("test", "val"):
        if isinstance(m.get(split), dict):
            return m[split], split, f"{split} split, n = {num(m[split].get('n'))} (metrics.json)"
    return None, "", ""


def strategy_name(files: RunFiles) -> str | None:
    """The run's strategy (RunInfo finds it where any schema version kept it)."""
    return files.info.strategy


def as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def ci_text(r: dict[str, Any], key: str) -> str:
    """A score with its 95 % interval, as every table of the report shows it."""
    from headstart.intervals import fmt_ci

    v = r.get(key)
    return fmt_ci(v, r.get(f"{key}_ci")) if v is not None else "–"


def find_file(source: str, files: RunFiles) -> Path | None:
    """The file a source of the run's records names (headstart.runs' one resolver), or None."""
    return resolve_path(files.path, source, files.info)
