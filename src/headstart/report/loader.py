"""Reading a run folder for the report: its JSON files, and the facts several sections share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.report.html import num


@dataclass
class RunFiles:
    """The JSON files of one run folder that the report reads (None where absent); `problems` for the rest."""

    path: Path
    run: dict[str, Any]
    data: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    curve: dict[str, Any] | None = None
    leakage: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.run.get("classes", [])]


def read_run_files(run_dir: str | Path) -> RunFiles:
    path = Path(run_dir)
    run_file = path / "run.json"
    if not run_file.is_file():
        raise HeadstartError(
            f"{path} is not a headstart run folder (no run.json)",
            fix="give the folder that `headstart probe` or `headstart fit` printed",
        )
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadstartError(f"{run_file} is not valid JSON: {e}", fix="the run folder is damaged") from e
    files = RunFiles(path=path, run=run)
    for attr, name in (
        ("data", "data.json"),
        ("metrics", "metrics.json"),
        ("evaluation", "evaluation.json"),
        ("history", "history.json"),
        ("compare", "compare.json"),
        ("curve", "curve.json"),
        ("leakage", "leakage.json"),
        ("recipe", "recipe.json"),
        ("calibration", "calibration.json"),
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
    run, recipe = files.run, files.recipe or {}
    for v in (
        run.get("strategy"),
        (run.get("params") or {}).get("strategy"),
        recipe.get("strategy"),
        recipe.get("name"),
    ):
        if v:
            return str(v)
    return None


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


def find_file(source: str, run_dir: Path) -> Path | None:
    """Sources are recorded as given (absolute, or relative to where the command ran, or to the run)."""
    if not source:
        return None
    for cand in (Path(source), run_dir / source):
        try:
            if cand.is_file():
                return cand
        except OSError:
            return None
    return None
