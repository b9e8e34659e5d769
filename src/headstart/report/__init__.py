"""The per-run HTML report: one self-contained page that shows everything a run folder records.

write_report("runs/demo")   # -> runs/demo/report.html

Each section reads one file of the run folder (data.json, compare.json, history.json, evaluation.json or
metrics.json, curve.json, run.json, ...) and is shown when that file exists; otherwise the section says
what is missing and which command computes it. Charts are matplotlib SVGs inlined as data URIs,
thumbnails are small inline JPEGs, and there is no script and no network access in the page.

Layout: `loader.py` reads the run folder (RunFiles) and holds the facts several sections share;
`sections/<id>.py` renders one section each (`hero.py` the header); `html.py` has the escaping building
blocks and the page template; `plots.py` the charts. This module puts the sections in their order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headstart.fileio import atomic_write_text
from headstart.report.html import Html, Section, join, note, page
from headstart.report.loader import RunFiles, read_run_files
from headstart.report.sections import (
    calibration,
    card,
    clusters,
    compare,
    confusion,
    curve,
    data,
    hero,
    mistakes,
    ood,
    overlap,
    overview,
    performance,
    slices,
    training,
)
from headstart.runs import REPORT_FILE

__all__ = ["REPORT_FILE", "SECTIONS", "Report", "RunFiles", "build_report", "read_run_files", "write_report"]

# (id, title, builder) in the order of the page; each builder is its module's `section(files)`.
_SECTIONS: tuple[tuple[str, str, Callable[[RunFiles], tuple[Html, bool]]], ...] = (
    ("overview", "Overview", overview.section),
    ("data", "Data", data.section),
    ("compare", "Strategy comparison", compare.section),
    ("training", "Learning curves", training.section),
    ("confusion", "Confusion matrix and per-class scores", confusion.section),
    ("overlap", "Pretraining overlap", overlap.section),
    ("slices", "Slices", slices.section),
    ("calibration", "Calibration", calibration.section),
    ("ood", "Out-of-distribution detection", ood.section),
    ("curve", "Label efficiency", curve.section),
    ("mistakes", "Most confident mistakes", mistakes.section),
    ("clusters", "Clusters and suspected mislabels", clusters.section),
    ("card", "Model card", card.section),
    ("performance", "Latency and memory", performance.section),
)
SECTIONS = tuple((sid, title) for sid, title, _ in _SECTIONS)
#: The sections a run of any task shape shows (headstart.shapes); the shape adds its own after them.
SHAPE_COMMON = ("data", "training", "card")


@dataclass
class Report:
    html: str
    sections: dict[str, bool]  # id -> computed


def build_report(run_dir: str | Path) -> Report:
    """The report page for `run_dir` as a string, plus which sections had data."""
    from headstart.shapes import shape_of_run

    files = read_run_files(run_dir)
    shape = shape_of_run(run_dir)
    chosen = list(_SECTIONS)
    if shape is not None:  # a multi-label, regression, tagging or generation run: its own scores' sections
        common = [s for s in _SECTIONS if s[0] in SHAPE_COMMON]
        from headstart.report.sections import shape_compare

        compared = ("shape_compare", "Strategy comparison", shape_compare.section)
        chosen = [*common[:1], compared, *shape.report_sections(), *common[1:]]
    sections = []
    for sid, title, build in chosen:
        try:
            body, computed = build(files)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            # A file with an unexpected shape spoils its own section, not the whole report.
            body, computed = note(f"could not show this section: {type(e).__name__}: {e}", "warn"), False
        sections.append(Section(sid, title, body, computed))
    if files.problems:
        sections[0].body = join(
            [sections[0].body, *(note(f"{n}: {why}", "warn") for n, why in files.problems.items())]
        )
    # Sections with data first, in their order; the ones still to compute follow, each saying how.
    sections.sort(key=lambda s: not s.computed)
    text = page(f"{files.name}: headstart report", hero.hero(files), sections)
    return Report(html=text, sections={s.id: s.computed for s in sections})


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default <run_dir>/report.html), atomically; return its path."""
    report = build_report(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    atomic_write_text(target, report.html)
    return target
