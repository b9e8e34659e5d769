"""The Python API (the CLI is a thin layer over it), scikit-learn shaped.

clf = ProbeClassifier("efficientnet_lite0").fit(paths, labels)
clf.predict_proba(more_paths); clf.save("runs/mine"); ProbeClassifier.load("runs/mine")

report = probe("examples/emoji/images", backbone="efficientnet_lite0")   # split, fit, evaluate, save
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headstart.config import FitConfig, ProbeConfig
from headstart.estimator import ARRAY_FIX, InputError, NotFitted, ProbeClassifier
from headstart.fileio import report_dict

if TYPE_CHECKING:
    from headstart.shapes import ShapeReport

__all__ = ["ARRAY_FIX", "FitConfig", "InputError", "NotFitted", "ProbeClassifier", "ProbeReport", "probe"]


@dataclass
class ProbeReport:
    """What `probe` measured, and where it saved the run."""

    run_dir: Path | None
    backbone: str
    classes: list[str]
    metrics: dict[str, Any]
    data: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self)


def probe(data: str | Path, **options: Any) -> ProbeReport:
    """Split `data`, embed it once (cached), fit the probe with L2 chosen on val, evaluate, save a run.

    `options` are the fields of `headstart.config.ProbeConfig` (the CLI's flags: same names, same defaults).
    This is `fit(data, strategy="head")`: the same pipeline (headstart.train.api.run_fit), the same run.
    """
    return run_probe(ProbeConfig(data, **options))


def run_probe(cfg: ProbeConfig) -> ProbeReport | ShapeReport:
    from headstart.shapes import shape_of_task
    from headstart.train.api import run_fit

    shape = shape_of_task(cfg.task)
    if shape is not None:
        return shape.probe(cfg)

    r = run_fit(FitConfig(**cfg.shared(), strategy="head"), probe=cfg)
    # A probe report is the fit report cut to the fields they share.
    return ProbeReport(**{f.name: getattr(r, f.name) for f in fields(ProbeReport)})
