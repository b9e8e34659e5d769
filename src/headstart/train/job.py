"""What one fit is while it runs (`FitJob`), what it returns (`FitReport`), and where its checkpoints live:
shared by the trained pipeline (headstart.train.api) and the closed-form one (headstart.train.frozen)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headstart.backbones import Backbone
    from headstart.config import FitConfig
    from headstart.data import Dataset
    from headstart.recipes import Recipe

WORK_SUFFIX = ".training"  # checkpoints live beside the run folder until the run is written


# In the work folder: what the run was started with (data, backbone, strategy, options), for --resume.
STARTED_FILE = "started.json"


def work_dir_of(run_dir: Path) -> Path:
    """Where a run's checkpoints live until it is written: `.NAME.training` beside the run folder."""
    return run_dir.parent / f".{run_dir.name}{WORK_SUFFIX}"


def open_work_dir(
    run_dir: Path, request: dict[str, Any], *, resume: bool, started: dict[str, Any] | None
) -> Path:
    """The work folder of a run's checkpoints and started.json (`request`), emptied for a fresh start; the
    main process makes it (fit, adapt). `started`: what check_out found the resumed run started with."""
    from headstart.train.engine import is_main_process

    work_dir = work_dir_of(run_dir)
    if is_main_process():
        if not resume:  # a fresh start (check_out refused an interrupted run unless --overwrite)
            shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        if started is None:  # what this run is, so a later --resume can refuse other options or data
            from headstart.fileio import atomic_write_json

            atomic_write_json(work_dir / STARTED_FILE, request)
    return work_dir


@dataclass
class FitReport:
    run_dir: Path | None
    backbone: str
    strategy: str
    classes: list[str]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    recipe: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "backbone": self.backbone,
            "strategy": self.strategy,
            "classes": self.classes,
            "metrics": self.metrics,
            "history": self.history,
            "recipe": self.recipe,
            "warnings": self.warnings,
            "data": self.data,
            "timings": self.timings,
        }


@dataclass
class FitJob:
    """One fit once its data and backbone are loaded: what the later steps read (and `ds` they narrow)."""

    cfg: FitConfig
    verb: str  # "fit", or "probe" (no --resume, so no work folder)
    request: dict[str, Any]  # what the run is started with: started.json, compared by --resume
    started: dict[str, Any] | None  # what the interrupted run was started with, when resuming
    timings: dict[str, float]
    ds: Dataset
    bb: Backbone
    recipe: Recipe
    adapter: dict[str, Any] | None  # the injected adapter's description (LoRA recipes)
    base_key: str  # the base backbone's key, before any adapter changed it
    item_hashes: dict[str, str] = field(default_factory=dict)  # content hash per source, for split.csv
    _run_dir: Path | None = field(default=None, init=False, repr=False)

    @property
    def run_dir(self) -> Path:
        """--out, or runs/<time>-<verb>-<backbone> (named once, when first asked)."""
        if self._run_dir is None:
            from headstart.runs import default_run_dir

            out = self.cfg.out
            self._run_dir = Path(out) if out else default_run_dir(self.verb, self.bb.name)
        return self._run_dir

    def open_work_dir(self) -> Path | None:
        """The folder of checkpoints and started.json beside the run (fit only; the main process makes it)."""
        if not self.cfg.save or self.verb != "fit":
            return None
        return open_work_dir(self.run_dir, self.request, resume=self.cfg.resume, started=self.started)

    def report(
        self,
        run_dir: Path | None,
        recipe: Recipe,
        metrics: dict[str, Any],
        history: list[dict[str, Any]],
        warnings: list[str],
    ) -> FitReport:
        """What the fit returns, whichever path ran it (`recipe`: the one that ran, as the Trainer has it)."""
        from headstart.runs import to_jsonable

        return FitReport(
            run_dir=run_dir,
            backbone=self.bb.name,
            strategy=recipe.name,
            classes=self.ds.classes,
            metrics=to_jsonable(metrics),
            history=to_jsonable(history),
            recipe=recipe.to_dict(),
            warnings=warnings,
            data=to_jsonable(self.ds.summary()),
            timings=self.timings,
        )
