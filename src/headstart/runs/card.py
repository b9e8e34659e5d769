"""The one model card of a run: what a user needs to trust it (the base's provenance, what trained and how,
the data, the metrics, the calibration, the library versions). The store's card.json, the export's card,
serve's /model and the report's card section are this card plus what each adds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.runs.folder import read_evaluation, read_json
from headstart.runs.names import CALIBRATION_FILE, DATA_FILE, METRICS_FILE, RECIPE_FILE, SHAPE_FILE
from headstart.runs.records import Calibration, RunInfo


def run_recipe(run_dir: Path | None, info: RunInfo) -> Any:
    """How the run was made: recipe.json, else run.json's recipe with its parameters (a probe's C, seed)
    over it, so two versions differ by what changed (`models diff`)."""
    recipe = read_json(run_dir / RECIPE_FILE) if run_dir is not None else {}
    if recipe:
        return recipe
    if info.recipe is not None:
        return {**info.recipe, **info.params}
    return info.params


def split_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accuracy, macro F1 and n of the val and test splits in a metrics.json."""
    return {
        s: {k: metrics[s][k] for k in ("accuracy", "macro_f1", "n") if k in metrics[s]}
        for s in ("val", "test")
        if isinstance(metrics.get(s), dict)
    }


def _base(info: RunInfo) -> dict[str, Any]:
    ref, card = info.backbone, info.backbone.card
    return {
        "name": ref.name or card.get("name"),
        "family": card.get("family"),
        "key": ref.key,
        "source": card.get("source"),
        "version": card.get("version"),
        "sha256": ref.weights_sha256 or card.get("weights_sha256"),
        "license": card.get("license"),
        "pretraining_data": card.get("pretraining_data"),
        "paper": card.get("paper"),
        "embed_dim": card.get("embed_dim"),
        "num_params": card.get("num_params"),
        "pretrained": info.pretrained,
    }


def _data(run_dir: Path | None) -> dict[str, Any]:
    data = read_json(run_dir / DATA_FILE) if run_dir is not None else {}
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    class_counts: dict[str, int] = {}
    for per_class in counts.values():
        for c, k in per_class.items():
            class_counts[c] = class_counts.get(c, 0) + int(k)
    return {
        "root": data.get("root"),
        "layout": data.get("layout"),
        "class_counts": class_counts,
        "split_counts": {s: sum(v.values()) for s, v in counts.items()},
        "skipped": data.get("skipped", {}),
    }


def _evaluation(run_dir: Path | None) -> dict[str, Any]:
    ev = read_evaluation(run_dir) if run_dir is not None else None
    if ev is None:
        return {}
    return {
        "split": ev.split,
        "accuracy": ev.metrics.get("accuracy"),
        "ece_before": ev.calibration.get("ece_before"),
        "ece_after": ev.calibration.get("ece_after"),
        "latency_single_p50_ms": ev.latency.get("single_p50_ms"),
    }


def run_card(
    run_dir: str | Path | None, info: RunInfo, *, temperature: float | None = None
) -> dict[str, Any]:
    """The card of the run at `run_dir` (None: a model without a folder: run.json's facts only).

    `temperature`: the one the model applies (a loaded model's); by default calibration.json's as recorded
    (None without one). `metrics`: accuracy, macro F1 and n of val and test (metrics.json); `evaluation`:
    the evaluated split's accuracy, ECE and latency (evaluation.json)."""
    folder = Path(run_dir) if run_dir is not None else None
    if temperature is None and folder is not None:  # unreadable: none (load_model refuses such a run)
        temperature = Calibration.from_dict(read_json(folder / CALIBRATION_FILE)).temperature
    return {
        "kind": info.kind,
        "task": info.task,
        "strategy": info.strategy,
        "modality": info.modality,
        "classes": list(info.classes),
        "backbone": info.backbone.to_dict(),
        "base": _base(info),
        "preprocess": info.preprocess,
        "trained_groups": info.trained_groups,
        "trainable_params": info.trainable_params,
        "objective": info.objective.to_dict() if info.objective else None,
        "recipe": run_recipe(folder, info),
        "seed": info.seed,
        "params": info.params,
        "metrics": split_metrics(read_json(folder / METRICS_FILE)) if folder is not None else {},
        "evaluation": _evaluation(folder),
        "temperature": temperature,
        # A task shape's read-out of its outputs (thresholds, target scale: headstart.shapes.linear).
        "readout": (read_json(folder / SHAPE_FILE) or None) if folder is not None else None,
        # The frozen forward the head was trained on (fp32 for runs from before int8 existed).
        "frozen_forward": info.extra.get("frozen_forward") or {"precision": "fp32"},
        "data": _data(folder),
        "versions": info.versions,
        "created": info.created,
        "run": str(folder) if folder is not None else None,
    }
