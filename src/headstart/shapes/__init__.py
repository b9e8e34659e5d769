"""Task shapes beyond one class per item: each is one module here and one line in `SHAPES`.

    headstart probe DATA --task multilabel     # a shape is chosen with --task (run.json records it)
    headstart evaluate RUN                     # later verbs read it from the run

A `Shape` runs the verbs for its task: `probe` and `fit` make a run folder (the same files as a
classification run where they mean the same: run.json with `task`, split.csv, data.json, metrics.json,
head/delta/adapter safetensors); `evaluate`, `report_sections`, `export` and `predictor` read it. The
classification path (`classify`, the default) is the rest of headstart and is not a Shape: every dispatch
point asks `shape_of_task` / `shape_of_run` and goes on as before on None.

The shapes: `multilabel` and `regress` (headstart.shapes.multilabel, .regression: a backbone and a linear
head, read differently), `tag` (headstart.shapes.tagging: a head on every token), `generate`
(headstart.shapes.generate: instruction tuning of a decoder LM, with a behaviour check).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.data.targets import TASKS, check_task
from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.config import FitConfig, ProbeConfig
    from headstart.report.loader import RunFiles

#: task -> module defining `SHAPE` (a Shape instance). A task listed in TASKS without a module here is
#: refused with a clear error, never half-run.
SHAPES: dict[str, str] = {
    "multilabel": "headstart.shapes.multilabel",
    "regress": "headstart.shapes.regression",
    "tag": "headstart.shapes.tagging",
    "generate": "headstart.shapes.generate",
}


@dataclass
class ShapeReport:
    """What `probe` / `fit` of a shape return (and print): the run's metrics, where it was saved, and the
    lines the plain output shows after its table. `--json` prints it whole."""

    task: str
    strategy: str
    backbone: str
    metrics: dict[str, Any]
    run_dir: str | None
    data: dict[str, Any] = field(default_factory=dict)
    #: (title, column names, rows) of the one table the plain output prints.
    table: tuple[str, list[str], list[list[str]]] | None = None
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What --json prints (commands.show): every field."""
        from dataclasses import asdict

        return asdict(self)


class ShapePredictor:
    """A loaded run of a shape, as predict and serve use it: read inputs, answer them.

    `answer(sources)` -> ([one JSON-able answer per usable source, in order], [their indices],
    {source: reason} for the unusable ones). `read_files` maps predict's FILE arguments to sources (a text
    model reads the file's text; never its name)."""

    task: str = ""
    modality: str = ""
    #: What serve's /health and the page show of the outputs (the label names; empty for a number).
    classes: Sequence[str] = ()

    def read_files(self, files: Sequence[str | Path]) -> list[Any]:
        raise NotImplementedError

    def answer(
        self, sources: Sequence[str], **kw: Any
    ) -> tuple[list[dict[str, Any]], list[int], dict[str, str]]:
        raise NotImplementedError

    def card(self) -> dict[str, Any]:
        """What serve's /card returns beside the run's own card (the task, thresholds, ...)."""
        return {"task": self.task}


class Shape:
    """The verbs of one task shape. A verb the shape cannot run raises a HeadstartError saying so."""

    name: str = ""
    modalities: tuple[str, ...] = ()
    #: fit strategies the shape runs (its --strategy choices), the first the default.
    strategies: tuple[str, ...] = ()
    #: what `auto --task` compares (headstart.shapes.auto): the probe ("head") first, the reference.
    auto_strategies: tuple[str, ...] = ("head", "lp-ft")
    #: what one item's score is (higher is better), for auto's paired verdicts.
    item_score_name: str = "per-item score"

    def _unsupported(self, verb: str) -> HeadstartError:
        return HeadstartError(
            f"`{verb}` does not run --task {self.name} runs", fix=f"use {verb} on a classify run"
        )

    def probe(self, cfg: ProbeConfig) -> ShapeReport:
        raise self._unsupported("probe")

    def fit(self, cfg: FitConfig) -> ShapeReport:
        raise self._unsupported("fit")

    def evaluate(self, run_dir: Path, **kw: Any) -> dict[str, Any]:
        """evaluate_run's keywords (data, split, save, out, progress, device, ...); returns what it wrote
        to evaluation.json."""
        raise self._unsupported("evaluate")

    def predictor(self, run_dir: Path, **kw: Any) -> ShapePredictor:
        raise self._unsupported("predict")

    def export(self, run_dir: Path, out: Path | None, **kw: Any) -> dict[str, Any]:
        raise self._unsupported("export")

    def item_scores(self, run_dir: Path, split: str) -> Any:
        """One score per item of `split` (np.ndarray, higher is better) for auto's paired verdicts: by
        default metrics.json's `<split>.item_scores`, which the shape's probe and fit record; None when the
        split has none."""
        import numpy as np

        from headstart.runs.folder import read_json
        from headstart.runs.names import METRICS_FILE

        scores = (read_json(Path(run_dir) / METRICS_FILE).get(split) or {}).get("item_scores")
        return None if scores is None else np.asarray(scores, dtype=float)

    #: (metrics key, label) of the scores the report's header shows first, from a split's metrics.
    headline: tuple[tuple[str, str], ...] = ()

    def headline_scores(self, split_metrics: dict[str, Any]) -> list[tuple[Any, Any, str]]:
        """(value, 95 % interval or None, label) of each headline score of one split's metrics."""
        return [(split_metrics.get(k), split_metrics.get(f"{k}_ci"), label) for k, label in self.headline]

    def report_sections(self) -> list[tuple[str, str, Callable[[RunFiles], tuple[Any, bool]]]]:
        """The report's sections of this shape as (id, title, build(files) -> (html, computed)), shown
        after the data section and before the sections every run has (headstart.report.SHAPE_COMMON)."""
        return []


def shape_of_task(task: str | None) -> Shape | None:
    """The Shape of `task`; None for classification (the rest of headstart)."""
    if task in (None, "classify"):
        return None
    check_task(task)
    module = SHAPES.get(task)
    if module is None:
        raise HeadstartError(f"--task {task} is not built yet", fix=f"use one of {', '.join(SHAPES)}")
    return importlib.import_module(module).SHAPE  # type: ignore[no-any-return]


def task_of_run(run_dir: str | Path) -> str:
    """run.json's `task` (runs before task shapes: classify). A missing run.json is left to the verb's own
    loader to refuse, with its message."""
    from headstart.runs.folder import read_json
    from headstart.runs.names import RUN_FILE

    return str(read_json(Path(run_dir) / RUN_FILE).get("task") or "classify")


def shape_of_run(run_dir: str | Path) -> Shape | None:
    return shape_of_task(task_of_run(run_dir))


__all__ = ["SHAPES", "TASKS", "Shape", "ShapePredictor", "ShapeReport", "shape_of_run", "shape_of_task"]
