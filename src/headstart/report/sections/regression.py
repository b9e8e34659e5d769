"""A regression run (--task regress): predicted against true values with the y = x line and the conformal
band, the scores with their intervals against the train-mean baseline, and the band's width."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headstart.report import plots
from headstart.report.html import Html, figure, join, key_value, not_computed, note, table
from headstart.report.loader import RunFiles, eval_cmd
from headstart.shapes.regression_table import (
    EVALUATED,
    SPLIT_ORDER,
    digits_for,
    fmt_value,
    metric_rows,
    run_scores,
)


@plots._styled
def predicted_vs_true(
    true: Sequence[float], pred: Sequence[float], halfwidth: float | None, title: str
) -> str:
    """Predicted against true values, the y = x line, and the conformal band y = x +- halfwidth."""
    fig, (ax,) = plots._figure(4.6, 4.4)
    lo, hi = min(*true, *pred), max(*true, *pred)
    pad = 0.04 * ((hi - lo) or 1.0)
    ends = [lo - pad, hi + pad]
    if halfwidth is not None:
        ax.fill_between(
            ends,
            [e - halfwidth for e in ends],
            [e + halfwidth for e in ends],
            color=plots.SERIES[0],
            alpha=0.14,
            linewidth=0,
            label=f"90% interval (\u00b1{halfwidth:.3g})",
        )
    ax.plot(ends, ends, color=plots.SERIES[3], linewidth=1.2, linestyle="--", label="predicted = true")
    ax.scatter(true, pred, s=9, color=plots.INK, alpha=0.6, linewidths=0, label="items")
    ax.set_xlim(*ends)
    ax.set_ylim(*ends)
    ax.set_aspect("equal")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.set_title(title, loc="left")
    ax.legend(loc="upper left", fontsize=8)
    return plots._svg_uri(fig)


def section(files: RunFiles) -> tuple[Html, bool]:
    splits, state = run_scores(files)
    cols, rows = metric_rows(splits)
    if not rows:
        return not_computed("no regression scores recorded", eval_cmd(files)), False
    parts: list[Any] = []
    q = state.get("halfwidth")
    if q is None:
        why = state.get("no_interval") or "no conformal interval was fitted"
        parts.append(note(f"Predictions carry no interval: {why}.", "warn"))
    else:
        parts.append(
            key_value(
                [
                    ("90% conformal interval", f"prediction \u00b1 {q:.4g} (a band {2 * q:.4g} wide)"),
                    ("fitted on", f"the absolute errors of {state.get('calibration_n', '?')} val items"),
                    (
                        "the probe's ridge strength per item (CV on train; a fine-tune starts there)",
                        "-" if state.get("lambda") is None else f"{state['lambda']:.3g}",
                    ),
                ]
            )
        )
    caption = (
        "95% intervals: item bootstrap (scores, the paired difference to the train mean); Wilson "
        "(coverage). A difference whose interval holds 0 is a tie."
    )
    parts.append(table(cols, rows, numeric=range(1, len(cols)), caption=caption))
    for split in (EVALUATED, *SPLIT_ORDER):
        m = splits.get(split) or {}
        if not m.get("true"):
            continue
        mae = fmt_value(m.get("mae"), None, digits_for([m.get("mae")]))
        title = f"{split}: R2 {fmt_value(m.get('r2'), None, 2)}, MAE {mae}"
        parts.append(
            figure(
                predicted_vs_true(m["true"], m["pred"], q, title),
                alt=f"Predicted against true values on {split} ({len(m['true'])} items)",
                caption="Each dot is one item; on the dashed line the prediction is exact. The shaded band "
                "is the 90% conformal interval around it.",
            )
        )
        break
    return join(parts), True
