"""What a stored version keeps of a run (`run_files`), and its model card (`model_card`, card.json): base
provenance, data, recipe, metrics and library versions, what a user needs to trust a stored model."""

from __future__ import annotations

import json
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
)

CARD_FILE = "card.json"
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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing or unreadable (a card lists what it can)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run_files(run_dir: Path, info: dict[str, Any]) -> list[str]:
    """The run's own files: the head, trained deltas/adapters listed in run.json, and its records."""
    names = {info["head"]["file"], *info.get("files", {})}
    names.update(f for f in RUN_FILES if (run_dir / f).is_file())
    for f in names:
        if "/" in f or f.startswith("."):
            raise HeadstartError(f"{run_dir}/{RUN_FILE} lists an unsafe file name {f!r}", fix="re-run it")
    return sorted(names)


def _run_recipe(info: dict[str, Any]) -> Any:
    """How a run without recipe.json was made: run.json's recipe with its parameters (a probe's C, seed)
    over it, so two versions differ by what changed (`models diff`)."""
    recipe, params = info.get("recipe"), info.get("params") or {}
    if isinstance(recipe, dict):
        return {**recipe, **params}
    return recipe or params


def model_card(run_dir: Path, info: dict[str, Any], *, name: str, version: int) -> dict[str, Any]:
    """What a user needs to trust a stored model: base provenance, data, recipe, metrics, versions."""
    card = info.get("backbone", {}).get("card", {})
    data = read_json(run_dir / DATA_FILE)
    metrics = read_json(run_dir / METRICS_FILE)
    evaluation = read_json(run_dir / EVALUATION_FILE)
    calibration = read_json(run_dir / CALIBRATION_FILE)
    recipe = read_json(run_dir / RECIPE_FILE) or _run_recipe(info)
    summary: dict[str, Any] = {}
    for s in ("val", "test"):
        if isinstance(metrics.get(s), dict):
            summary[f"{s}_accuracy"] = metrics[s].get("accuracy")
            summary[f"{s}_macro_f1"] = metrics[s].get("macro_f1")
    if evaluation:
        summary["evaluated_split"] = evaluation.get("split")
        summary["evaluated_accuracy"] = evaluation.get("metrics", {}).get("accuracy")
        summary["ece_before"] = evaluation.get("calibration", {}).get("ece_before")
        summary["ece_after"] = evaluation.get("calibration", {}).get("ece_after")
        summary["latency_single_p50_ms"] = (evaluation.get("latency") or {}).get("single_p50_ms")
    counts = data.get("counts", {})
    class_counts: dict[str, int] = {}
    for per_class in counts.values():
        for c, k in per_class.items():
            class_counts[c] = class_counts.get(c, 0) + int(k)
    return {
        "name": name,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kind": info.get("kind", "probe"),
        "classes": info.get("classes", []),
        "base": {
            "name": info.get("backbone", {}).get("name"),
            "source": card.get("source"),
            "version": card.get("version"),
            "sha256": info.get("backbone", {}).get("weights_sha256") or card.get("weights_sha256"),
            "license": card.get("license"),
            "pretraining_data": card.get("pretraining_data"),
            "paper": card.get("paper"),
            "pretrained": bool(info.get("pretrained", True)),
        },
        "data": {
            "root": data.get("root"),
            "layout": data.get("layout"),
            "class_counts": class_counts,
            "split_counts": {s: sum(v.values()) for s, v in counts.items()},
            "skipped": data.get("skipped", {}),
        },
        "recipe": recipe,
        "seed": info.get("seed", info.get("params", {}).get("seed")),
        "metrics": summary,
        "temperature": calibration.get("temperature"),
        "trainable_params": info.get("trainable_params"),
        "versions": info.get("versions", {}),
        "source_run": str(run_dir.resolve()),
    }
