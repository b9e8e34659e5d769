"""How a regression run's scores read (headstart.shapes.regression): numbers at a sensible number of
decimals, the table the CLI and the report print, and the scores per split the report reads. Apart from
the shape, so the report's section and the shape both import it without importing each other."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headstart.report.loader import RunFiles

#: The plain output's and the report's split order (the held-out ones first).
SPLIT_ORDER = ("test", "val", "train")
EVALUATED = "evaluated data"


def digits_for(values: Sequence[float | None]) -> int:
    """Decimals that show values of this size to about three figures (an angle: 1; a 0..1 score: 3)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 3
    return max(0, min(6, 2 - math.floor(math.log10(max(finite)))))


def fmt_value(v: float | None, ci: Sequence[float | None] | None = None, digits: int = 3) -> str:
    """'3.21 [2.50, 3.90]': a value (and its interval when it has one) at `digits` decimals; '-' if none."""
    if v is None or not math.isfinite(v):
        return "-"
    if not ci or any(c is None or not math.isfinite(c) for c in ci):
        return f"{v:.{digits}f}"
    lo, hi = float(ci[0]), float(ci[1])  # type: ignore[arg-type]
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _vs(d: dict[str, Any] | None, digits: int) -> str:
    if not d:
        return "-"
    verdict = "tie" if d.get("tie") else ("lower" if d.get("better") else "higher")
    return f"{fmt_value(d.get('diff'), d.get('ci'), digits)} ({verdict})"


def metric_rows(splits: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per split: the model's MAE / RMSE / R^2, the train mean's MAE, the paired difference of the two
    (negative: the model's error is lower; 'tie' when its interval holds 0), and the interval's coverage."""
    cols = ["split", "n", "MAE", "RMSE", "R2", "train-mean MAE", "MAE minus mean's", "90% interval holds"]
    rows = []
    for split in [*SPLIT_ORDER, EVALUATED]:
        m = splits.get(split)
        if not isinstance(m, dict) or not m.get("n"):
            continue
        dg = digits_for([m.get("mae")])
        base, cov = m.get("baseline") or {}, m.get("coverage")
        held = f"{cov['rate']:.0%} [{cov['ci'][0]:.0%}, {cov['ci'][1]:.0%}]" if cov else "-"
        rows.append(
            [
                split,
                str(m["n"]),
                fmt_value(m.get("mae"), m.get("mae_ci"), dg),
                fmt_value(m.get("rmse"), m.get("rmse_ci"), dg),
                fmt_value(m.get("r2"), m.get("r2_ci"), 2),
                fmt_value(base.get("mae"), base.get("mae_ci"), dg),
                _vs((m.get("vs_baseline") or {}).get("mae"), dg),
                held,
            ]
        )
    return cols, rows


def run_scores(files: RunFiles) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scores per split from metrics.json, plus evaluate's on other data as EVALUATED; the read-out
    state) of a regression run, as the report reads them."""
    metrics = files.metrics or {}
    splits = {s: metrics[s] for s in SPLIT_ORDER if isinstance(metrics.get(s), dict)}
    ev = files.evaluation or {}
    if ev.get("task") == "regress" and "split.csv" not in str(ev.get("data", "")):
        splits[EVALUATED] = ev.get("metrics") or {}
    return splits, metrics.get("readout") or {}
