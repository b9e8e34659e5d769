"""What a stored version keeps of a run (`run_files`), and its model card (`model_card`, card.json): the run's
card (headstart.runs.run_card: base provenance, data, recipe, metrics, library versions) as stored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.runs import (
    CALIBRATION_FILE,
    COMPARE_FILE,
    CURVE_FILE,
    DATA_FILE,
    EVALUATION_FILE,
    HISTORY_CSV_FILE,
    HISTORY_FILE,
    LEAKAGE_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    REPORT_FILE,
    RUN_FILE,
    SPLIT_FILE,
    RunInfo,
    read_json,
    run_card,
)

CARD_FILE = "card.json"
__all__ = ["CARD_FILE", "RUN_FILES", "model_card", "read_json", "run_files"]
# What a version keeps of a run: its trained delta and records; the base weights are referenced by hash.
RUN_FILES = (
    RUN_FILE,
    METRICS_FILE,
    DATA_FILE,
    SPLIT_FILE,
    CALIBRATION_FILE,
    EVALUATION_FILE,
    RECIPE_FILE,
    HISTORY_FILE,
    HISTORY_CSV_FILE,
    # The evidence behind the choice, when the run was picked by `headstart auto`, and its report.
    COMPARE_FILE,
    LEAKAGE_FILE,
    CURVE_FILE,
    REPORT_FILE,
)


def run_files(run_dir: Path, info: RunInfo) -> list[str]:
    """The run's own files: the head, trained deltas/adapters listed in run.json, and its records."""
    names = set(info.stored_files)
    names.update(f for f in RUN_FILES if (run_dir / f).is_file())
    for f in names:
        if "/" in f or f.startswith("."):
            raise HeadstartError(f"{run_dir}/{RUN_FILE} lists an unsafe file name {f!r}", fix="re-run it")
    return sorted(names)


def model_card(run_dir: Path, info: RunInfo, *, name: str, version: int) -> dict[str, Any]:
    """What a user needs to trust a stored model (headstart.runs.run_card: base provenance, data, recipe,
    metrics, versions), with the version's name and number, and the metrics as one flat summary."""
    card = run_card(run_dir, info)
    summary: dict[str, Any] = {}
    for s, m in card["metrics"].items():
        summary[f"{s}_accuracy"] = m.get("accuracy")
        summary[f"{s}_macro_f1"] = m.get("macro_f1")
    ev = card["evaluation"]
    if ev:
        summary["evaluated_split"] = ev["split"]
        summary["evaluated_accuracy"] = ev["accuracy"]
        summary["ece_before"] = ev["ece_before"]
        summary["ece_after"] = ev["ece_after"]
        summary["latency_single_p50_ms"] = ev["latency_single_p50_ms"]
    return {
        "name": name,
        "version": version,
        **card,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metrics": summary,
        "source_run": str(run_dir.resolve()),
    }
